//! The COCO caption evaluation (pycocoevalcap's `COCOEvalCap` without METEOR and SPICE):
//! PTB-tokenise references and hypotheses, then BLEU-1..4, ROUGE-L and CIDEr-D.

use serde::Serialize;

use crate::{bleu::Bleu, cider::CiderD, ptb::tokenize_captions, rouge::rouge_l};

/// Scores of one image.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CaptionItemScores {
    pub image_id: String,
    pub bleu: [f64; 4],
    pub rouge_l: f64,
    pub cider: f64,
}

/// Corpus scores (fractions, as pycocoevalcap reports them; CIDEr-D is not bounded by 1).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CaptionScores {
    pub images: usize,
    pub bleu: [f64; 4],
    pub rouge_l: f64,
    pub cider: f64,
    pub per_item: Vec<CaptionItemScores>,
}

/// A streaming caption evaluator: add images one by one (raw captions; tokenised on the way in),
/// then [`CaptionEval::compute`].
#[derive(Debug, Default, Clone)]
pub struct CaptionEval {
    ids: Vec<String>,
    /// Raw captions waiting for tokenisation (tokenised together at `compute`, as pycocoevalcap
    /// tokenises all references in one run and all predictions in another).
    raw: Vec<(String, Vec<String>)>,
    /// Already tokenised (hypothesis, references).
    tokenized: Vec<Option<(String, Vec<String>)>>,
}

impl CaptionEval {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one image: its predicted caption and its reference captions (raw text).
    pub fn add(&mut self, image_id: impl Into<String>, prediction: &str, references: &[String]) {
        self.ids.push(image_id.into());
        self.raw.push((prediction.to_string(), references.to_vec()));
        self.tokenized.push(None);
    }

    /// Adds one image whose captions are already PTB-tokenised (space-separated).
    pub fn add_tokenized(
        &mut self,
        image_id: impl Into<String>,
        hypothesis: &str,
        references: &[String],
    ) {
        self.ids.push(image_id.into());
        self.raw.push((String::new(), Vec::new()));
        self.tokenized
            .push(Some((hypothesis.to_string(), references.to_vec())));
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn compute(&self) -> CaptionScores {
        // tokenise the raw items in two runs, references then predictions, like pycocoevalcap
        let raw_idx: Vec<usize> = (0..self.ids.len())
            .filter(|&i| self.tokenized[i].is_none())
            .collect();
        let ref_lines: Vec<&str> = raw_idx
            .iter()
            .flat_map(|&i| self.raw[i].1.iter().map(String::as_str))
            .collect();
        let pred_lines: Vec<&str> = raw_idx.iter().map(|&i| self.raw[i].0.as_str()).collect();
        let mut refs_tok = tokenize_captions(&ref_lines).into_iter();
        let mut preds_tok = tokenize_captions(&pred_lines).into_iter();
        let mut bleu = Bleu::new();
        let mut cider = CiderD::new();
        let mut rouge = Vec::with_capacity(self.ids.len());
        for i in 0..self.ids.len() {
            let (hyp, refs) = match &self.tokenized[i] {
                Some((h, r)) => (h.clone(), r.clone()),
                None => {
                    let refs: Vec<String> = refs_tok.by_ref().take(self.raw[i].1.len()).collect();
                    (preds_tok.next().unwrap_or_default(), refs)
                }
            };
            bleu.add(&hyp, &refs);
            cider.add(&hyp, &refs);
            rouge.push(rouge_l(&hyp, &refs));
        }
        let (bleu, bleu_per) = bleu.compute();
        let (cider, cider_per) = cider.compute();
        let n = self.ids.len();
        let rouge_mean = if n == 0 {
            0.0
        } else {
            rouge.iter().sum::<f64>() / n as f64
        };
        let per_item = (0..n)
            .map(|i| CaptionItemScores {
                image_id: self.ids[i].clone(),
                bleu: bleu_per[i],
                rouge_l: rouge[i],
                cider: cider_per[i],
            })
            .collect();
        CaptionScores {
            images: n,
            bleu,
            rouge_l: rouge_mean,
            cider,
            per_item,
        }
    }
}
