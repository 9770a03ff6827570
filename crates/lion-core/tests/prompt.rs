//! Soft prompts: insertion at placeholder rows, gated == static at initialisation, gradients,
//! prompt text.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use lion_core::prompt::{
    format_tag_scores, format_tags, insert_soft_prompt, PromptKind, PromptTemplates, SoftPrompt,
    Task,
};
use lion_core::testing::{check_all_vars_get_grad, max_abs_diff};

const PH: u32 = 7;

fn embeds() -> Tensor {
    Tensor::arange(0f32, 2. * 5. * 3., &Device::Cpu)
        .unwrap()
        .reshape((2, 5, 3))
        .unwrap()
}

#[test]
fn replaces_only_placeholder_rows() {
    let ids = vec![vec![1, PH, 2, 3, 0], vec![PH, 4, 5, 6, 9]];
    let prompt = Tensor::new(&[[[-1f32, -2., -3.]], [[-4., -5., -6.]]], &Device::Cpu).unwrap();
    let out = insert_soft_prompt(&embeds(), &ids, PH, &prompt).unwrap();
    let out = out.to_vec3::<f32>().unwrap();
    let e = embeds().to_vec3::<f32>().unwrap();
    assert_eq!(out[0][1], vec![-1., -2., -3.]);
    assert_eq!(out[1][0], vec![-4., -5., -6.]);
    for (i, row) in ids.iter().enumerate() {
        for (p, id) in row.iter().enumerate() {
            if *id != PH {
                assert_eq!(out[i][p], e[i][p], "row {i} pos {p} changed");
            }
        }
    }
}

#[test]
fn unpadded_id_rows_of_a_padded_batch_are_accepted() {
    // `Encoded::ids` holds unpadded rows: a shorter row is right-padded in the embeddings
    let ids = vec![vec![1, PH, 2], vec![PH, 4, 5, 6, 9]];
    let prompt = Tensor::new(&[[[-1f32, -2., -3.]], [[-4., -5., -6.]]], &Device::Cpu).unwrap();
    let out = insert_soft_prompt(&embeds(), &ids, PH, &prompt)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let e = embeds().to_vec3::<f32>().unwrap();
    assert_eq!(out[0][1], vec![-1., -2., -3.]);
    assert_eq!(out[1][0], vec![-4., -5., -6.]);
    assert_eq!(out[0][3..], e[0][3..], "padding rows untouched");
    // a row longer than the embeddings is an error
    let ids = vec![vec![1, PH, 2, 3, 4, 5], vec![PH, 4, 5, 6, 9]];
    assert!(insert_soft_prompt(&embeds(), &ids, PH, &prompt).is_err());
}

#[test]
fn truncated_placeholder_keeps_the_row_and_wrong_count_is_an_error() {
    let prompt = Tensor::ones((2, 1, 3), DType::F32, &Device::Cpu).unwrap();
    let ids = vec![vec![1, 2, 3, 4, 5], vec![PH, 4, 5, 6, 9]];
    let out = insert_soft_prompt(&embeds(), &ids, PH, &prompt).unwrap();
    assert_eq!(
        out.to_vec3::<f32>().unwrap()[0],
        embeds().to_vec3::<f32>().unwrap()[0]
    );
    let ids = vec![vec![PH, PH, 3, 4, 5], vec![PH, 4, 5, 6, 9]];
    let err = insert_soft_prompt(&embeds(), &ids, PH, &prompt).unwrap_err();
    assert!(
        err.to_string().contains("row 0 has 2 placeholder tokens"),
        "{err}"
    );
}

fn build(kind: PromptKind, vm: &VarMap) -> SoftPrompt {
    let vb = VarBuilder::from_varmap(vm, DType::F32, &Device::Cpu);
    SoftPrompt::new(kind, 6, 4, vb).unwrap()
}

#[test]
fn gated_k1_starts_exactly_at_static() {
    let vm = VarMap::new();
    let stat = build(PromptKind::Static, &vm);
    let gated = build(PromptKind::Gated { k: 1 }, &vm); // shares `soft_prompt_hint`
    let tag = Tensor::randn(0f32, 1., (3, 4), &Device::Cpu).unwrap();
    let a = stat.forward(None, 3).unwrap();
    let b = gated.forward(Some(&tag), 3).unwrap();
    assert_eq!(a.dims(), &[3, 1, 6]);
    assert_eq!(max_abs_diff(&a, &b).unwrap(), 0.0);
    // k = 3: slot 0 is the hint, the others start at zero
    let g3 = build(PromptKind::Gated { k: 3 }, &VarMap::new());
    let out = g3.forward(Some(&tag), 3).unwrap();
    assert_eq!(out.dims(), &[3, 3, 6]);
    let zeros = out
        .narrow(1, 1, 2)
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap();
    assert_eq!(zeros.to_scalar::<f32>().unwrap(), 0.0);
}

#[test]
fn dynamic_depends_on_the_tag_embedding_and_needs_one() {
    let p = build(PromptKind::Dynamic, &VarMap::new());
    let t1 = Tensor::randn(0f32, 1., (2, 4), &Device::Cpu).unwrap();
    let t2 = Tensor::randn(0f32, 1., (2, 4), &Device::Cpu).unwrap();
    let a = p.forward(Some(&t1), 2).unwrap();
    let b = p.forward(Some(&t2), 2).unwrap();
    assert!(max_abs_diff(&a, &b).unwrap() > 1e-3);
    assert!(p.forward(None, 2).is_err());
    assert!(p.forward(Some(&t1), 3).is_err());
}

#[test]
fn every_soft_prompt_variable_gets_a_gradient() {
    for kind in [
        PromptKind::Static,
        PromptKind::Dynamic,
        PromptKind::Gated { k: 2 },
    ] {
        let vm = VarMap::new();
        let p = build(kind, &vm);
        if let Some(gate) = vm.data().lock().unwrap().get("dynamic_prompt_gate") {
            // zero-initialised gate: the projection gets gradient once the gate moved
            gate.set(&Tensor::new(&[0.5f32, -0.5], &Device::Cpu).unwrap())
                .unwrap();
        }
        let tag = Var::randn(0f32, 1., (2, 4), &Device::Cpu).unwrap();
        let ids = vec![vec![1, PH, 3, PH, 5], vec![PH, PH, 5, 6, 9]];
        let ids: Vec<Vec<u32>> = if kind.slots() == 1 {
            vec![vec![1, PH, 3, 4, 5], vec![PH, 4, 5, 6, 9]]
        } else {
            ids
        };
        let e = Tensor::randn(0f32, 1., (2, 5, 6), &Device::Cpu).unwrap();
        let out = insert_soft_prompt(&e, &ids, PH, &p.forward(Some(&tag), 2).unwrap()).unwrap();
        let w = Tensor::randn(0f32, 1., (2, 5, 6), &Device::Cpu).unwrap();
        let loss = (out * w).unwrap().sum_all().unwrap();
        check_all_vars_get_grad(&vm, &loss).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
    }
}

#[test]
fn prompt_text_as_lion_writes_it() {
    let t = PromptTemplates::default();
    let tags = format_tags(&["airport", "beagle", "bend"]);
    let text = t.encoder_text(1, &tags, &t.instruction(Task::Caption, ""));
    assert_eq!(
        text,
        "According to <extra_id_0>, you are allowed to use or partially use the following tags: \
         [airport, beagle, bend]. Please describe the image using a single short sentence."
    );
    let rec = t.encoder_text(2, "a", &t.instruction(Task::Rec, "the red circle"));
    assert!(
        rec.starts_with("According to <extra_id_0> <extra_id_0>, you"),
        "{rec}"
    );
    assert!(rec.ends_with("can you locate the red circle and let me know its coordinates?"));
    let no_tags = PromptTemplates {
        tag_text: false,
        ..t.clone()
    };
    assert_eq!(
        no_tags.encoder_text(1, &tags, &t.instruction(Task::Vqa, "What colour?")),
        "<extra_id_0> Question: What colour? Short answer:"
    );
    assert_eq!(
        format_tag_scores(&[("dog", 0.923f32), ("grass", 0.8)]),
        "dog: 0.92, grass: 0.80"
    );
    assert_eq!(
        lion_core::bbox::format([44., 6., 65., 36.7], 100, 100),
        "[0.440,0.060,0.650,0.367]"
    );
    assert_eq!(
        lion_core::bbox::format([-5., 0., 250., 50.], 200, 100),
        "[0.000,0.000,1.000,0.500]"
    );
}

#[test]
fn a_caption_text_replaces_the_captioning_instruction() {
    let t = PromptTemplates::default();
    assert_eq!(t.instruction(Task::Caption, ""), t.caption);
    assert_eq!(
        t.instruction(Task::Caption, "Describe the colours."),
        "Describe the colours."
    );
    // Questions and expressions still go into their templates.
    assert_eq!(
        t.instruction(Task::Vqa, "why?"),
        "Question: why? Short answer:"
    );
}

#[test]
fn rows_shorter_than_the_padded_batch_are_accepted_and_longer_ones_refused() {
    // `Encoded::ids` holds unpadded rows; the embeddings are padded to the longest row.
    let prompt = Tensor::new(&[[[-1f32, -2., -3.]], [[-4., -5., -6.]]], &Device::Cpu).unwrap();
    let ids = vec![vec![1, PH, 2, 3, 1], vec![PH, 4, 1]];
    let out = insert_soft_prompt(&embeds(), &ids, PH, &prompt)
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    assert_eq!(out[0][1], vec![-1., -2., -3.]);
    assert_eq!(out[1][0], vec![-4., -5., -6.]);
    assert_eq!(out[1][4], embeds().to_vec3::<f32>().unwrap()[1][4]);
    let ids = vec![vec![1, PH, 2, 3, 1, 1], vec![PH]];
    let err = insert_soft_prompt(&embeds(), &ids, PH, &prompt).unwrap_err();
    assert!(err.to_string().contains("has 6 tokens"), "{err}");
}
