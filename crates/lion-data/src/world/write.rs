//! Writing a world: every image rendered in parallel, then each split's annotation files in the
//! formats the readers and upstream expect (COCO captions, VQA, RefCOCO, LION JSON, tags).

use super::*;

pub(super) struct Job {
    split: &'static str,
    split_code: u64,
    index: usize,
    image_id: u64,
}

/// Images and their PNG checksums, in job order.
pub(super) fn render_all(
    cfg: &WorldConfig,
    dir: &Path,
    vocab: &[String],
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<(WorldImage, u64, u64)>, WorldError> {
    let mut jobs = Vec::new();
    let mut next_id = 1u64;
    for (code, (split, n)) in cfg.splits().into_iter().enumerate() {
        for index in 0..n {
            jobs.push(Job {
                split,
                split_code: code as u64,
                index,
                image_id: next_id,
            });
            next_id += 1;
        }
    }
    let threads = match cfg.threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
    .min(jobs.len())
    .max(1);
    let next = AtomicUsize::new(0);
    let done = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let worker = || -> Result<Vec<(usize, WorldImage, u64, u64)>, WorldError> {
        let mut mine = Vec::new();
        loop {
            if failed.load(Ordering::Relaxed) {
                break;
            }
            let j = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = jobs.get(j) else { break };
            let g = make_image(
                cfg.seed,
                job.split_code,
                job.index,
                cfg.size,
                cfg.questions_per_image,
                vocab,
            );
            let file_name = format!("images/{}/{:06}.png", job.split, job.image_id);
            let png =
                raster::encode_png(g.scene.width, g.scene.height, &g.pixels).map_err(|e| {
                    WorldError::Png {
                        path: file_name.clone(),
                        msg: e.to_string(),
                    }
                })?;
            let path = dir.join(&file_name);
            std::fs::write(&path, &png).map_err(io_err(&path))?;
            mine.push((
                j,
                WorldImage {
                    split: job.split,
                    image_id: job.image_id,
                    file_name,
                    scene: g.scene,
                    captions: g.captions,
                    questions: g.questions,
                    referrals: g.referrals,
                    tags: g.tags,
                },
                fnv1a64(&png),
                png.len() as u64,
            ));
            progress(done.fetch_add(1, Ordering::Relaxed) as u64 + 1);
        }
        Ok(mine)
    };
    let results: Vec<Result<Vec<_>, WorldError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let r = worker();
                    if r.is_err() {
                        failed.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    failed.store(true, Ordering::Relaxed);
                    Err(WorldError::Stopped("a generator thread panicked".into()))
                })
            })
            .collect()
    });
    let mut all = Vec::with_capacity(jobs.len());
    for r in results {
        all.extend(r?);
    }
    all.sort_by_key(|(j, ..)| *j);
    Ok(all.into_iter().map(|(_, w, h, b)| (w, h, b)).collect())
}

pub(super) fn info(cfg: &WorldConfig, what: &str) -> Info {
    Info {
        description: format!("ShapesWorld {what}"),
        version: format!("{GENERATOR_VERSION}"),
        seed: cfg.seed,
    }
}

/// Serialises compactly, then writes and records the file (all in the staging directory).
pub(super) fn write_json<T: serde::Serialize>(
    dir: &Path,
    rel: &str,
    format: &str,
    value: &T,
    files: &mut Vec<FileEntry>,
) -> Result<(), WorldError> {
    let bytes = serde_json::to_vec(value).map_err(|e| WorldError::Output {
        path: dir.join(rel),
        msg: e.to_string(),
    })?;
    write_file(dir, rel, format, &bytes, files)
}

pub(super) fn write_file(
    dir: &Path,
    rel: &str,
    format: &str,
    bytes: &[u8],
    files: &mut Vec<FileEntry>,
) -> Result<(), WorldError> {
    let path = dir.join(rel);
    std::fs::write(&path, bytes).map_err(io_err(&path))?;
    files.push(FileEntry {
        path: rel.to_string(),
        format: format.to_string(),
        bytes: bytes.len() as u64,
        fnv1a64: format!("{:016x}", fnv1a64(bytes)),
    });
    Ok(())
}

pub(super) fn generate_into(
    cfg: &WorldConfig,
    dir: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Manifest, WorldError> {
    for (split, _) in cfg.splits() {
        let d = dir.join("images").join(split);
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    let vocab = language::tag_vocabulary();
    let rendered = render_all(cfg, dir, &vocab, progress)?;
    let (w, h) = (cfg.size, cfg.size);

    let mut files: Vec<FileEntry> = Vec::new();
    let mut splits: Vec<SplitSummary> = Vec::new();
    let mut all_images: Vec<CocoImage> = Vec::new();
    let mut instances: Vec<CocoInstance> = Vec::new();
    let mut refs: Vec<RefRecord> = Vec::new();
    let (mut ref_id, mut sent_id) = (0u64, 0u64);

    for (split, n) in cfg.splits() {
        let imgs: Vec<&WorldImage> = rendered
            .iter()
            .map(|(wi, ..)| wi)
            .filter(|wi| wi.split == split)
            .collect();
        debug_assert_eq!(imgs.len(), n);
        let coco_images: Vec<CocoImage> = imgs
            .iter()
            .map(|wi| CocoImage {
                id: wi.image_id,
                file_name: wi.file_name.clone(),
                width: w,
                height: h,
            })
            .collect();
        all_images.extend(coco_images.iter().cloned());
        let mut captions = Vec::new();
        let mut questions = Vec::new();
        let mut annotations = Vec::new();
        let mut lion_cap = Vec::new();
        let mut lion_vqa = Vec::new();
        let mut lion_rec = Vec::new();
        let mut tag_rows = Vec::new();
        let mut kinds: std::collections::BTreeMap<String, usize> = QuestionKind::ALL
            .iter()
            .map(|k| (k.name().to_string(), 0))
            .collect();
        let (mut n_objects, mut n_refs, mut n_sents) = (0, 0, 0);
        for wi in &imgs {
            for (i, c) in wi.captions.iter().enumerate() {
                captions.push(CocoCaption {
                    id: wi.image_id * 10 + i as u64,
                    image_id: wi.image_id,
                    caption: c.clone(),
                });
                lion_cap.push(LionRecord {
                    image: wi.file_name.clone(),
                    question: CAPTION_PROMPT.to_string(),
                    answer: c.clone(),
                    category: "image_level".into(),
                    tags: wi.tags.clone(),
                });
            }
            for (i, q) in wi.questions.iter().enumerate() {
                let qid = wi.image_id * 1000 + i as u64;
                *kinds.entry(q.kind.name().to_string()).or_default() += 1;
                questions.push(VqaQuestion {
                    image_id: wi.image_id,
                    question: q.question.clone(),
                    question_id: qid,
                });
                annotations.push(VqaAnnotation {
                    question_type: q.kind.question_type().into(),
                    multiple_choice_answer: q.multiple_choice_answer.clone(),
                    answers: q
                        .answers
                        .iter()
                        .enumerate()
                        .map(|(k, a)| VqaAnswer {
                            answer: a.answer.clone(),
                            answer_confidence: a.confidence.into(),
                            answer_id: k as u32 + 1,
                        })
                        .collect(),
                    image_id: wi.image_id,
                    answer_type: q.kind.answer_type().into(),
                    question_id: qid,
                });
                lion_vqa.push(LionRecord {
                    image: wi.file_name.clone(),
                    question: VQA_PROMPT.replace("{}", &q.question),
                    answer: q.multiple_choice_answer.clone(),
                    category: "image_level".into(),
                    tags: wi.tags.clone(),
                });
            }
            for (k, o) in wi.scene.objects.iter().enumerate() {
                let b = o.bbox;
                instances.push(CocoInstance {
                    id: wi.image_id * 10 + k as u64,
                    image_id: wi.image_id,
                    category_id: o.shape.category_id(),
                    bbox: [
                        b[0] as f64,
                        b[1] as f64,
                        (b[2] - b[0]) as f64,
                        (b[3] - b[1]) as f64,
                    ],
                    area: o.area as f64,
                    iscrowd: 0,
                    shape: o.shape.name().into(),
                    color: o.color.name().into(),
                    size: o.size.name().into(),
                });
            }
            n_objects += wi.scene.objects.len();
            for r in &wi.referrals {
                let o = &wi.scene.objects[r.object];
                let mut sentences = Vec::new();
                let mut sent_ids = Vec::new();
                for s in &r.sentences {
                    sentences.push(RefSentence {
                        tokens: s.split_whitespace().map(str::to_string).collect(),
                        raw: s.clone(),
                        sent_id,
                        sent: s.clone(),
                    });
                    sent_ids.push(sent_id);
                    lion_rec.push(LionRecord {
                        image: wi.file_name.clone(),
                        question: REC_PROMPT.replace("{}", s),
                        answer: box_text(o.bbox, w, h),
                        category: "region_level".into(),
                        tags: wi.tags.clone(),
                    });
                    sent_id += 1;
                    n_sents += 1;
                }
                refs.push(RefRecord {
                    sent_ids,
                    file_name: wi.file_name.clone(),
                    ann_id: wi.image_id * 10 + r.object as u64,
                    ref_id,
                    image_id: wi.image_id,
                    split: split.into(),
                    sentences,
                    category_id: o.shape.category_id(),
                });
                ref_id += 1;
                n_refs += 1;
            }
            tag_rows.push(ImageTags {
                image_id: wi.image_id,
                file_name: wi.file_name.clone(),
                tags: wi.tags.clone(),
            });
        }
        splits.push(SplitSummary {
            name: split.into(),
            images: imgs.len(),
            first_image_id: imgs.first().map_or(0, |wi| wi.image_id),
            objects: n_objects,
            captions: captions.len(),
            questions: questions.len(),
            question_kinds: kinds,
            refs: n_refs,
            ref_sentences: n_sents,
        });
        write_json(
            dir,
            &format!("captions_{split}.json"),
            "COCO captions",
            &CocoCaptions {
                info: info(cfg, &format!("captions, {split}")),
                licenses: vec![],
                images: coco_images.clone(),
                annotations: captions,
            },
            &mut files,
        )?;
        let license = serde_json::json!({"name": "generated, no restrictions", "url": ""});
        write_json(
            dir,
            &format!("questions_{split}.json"),
            "VQA v2 questions",
            &VqaQuestions {
                info: info(cfg, &format!("VQA questions, {split}")),
                task_type: "Open-Ended".into(),
                data_type: "shapesworld".into(),
                data_subtype: split.into(),
                license: license.clone(),
                questions,
            },
            &mut files,
        )?;
        write_json(
            dir,
            &format!("annotations_{split}.json"),
            "VQA v2 annotations",
            &VqaAnnotations {
                info: info(cfg, &format!("VQA annotations, {split}")),
                data_type: "shapesworld".into(),
                data_subtype: split.into(),
                license,
                annotations,
            },
            &mut files,
        )?;
        for (task, records) in [("caption", lion_cap), ("vqa", lion_vqa), ("rec", lion_rec)] {
            write_json(
                dir,
                &format!("lion_{task}_{split}.json"),
                "LION training JSON",
                &records,
                &mut files,
            )?;
        }
        write_json(
            dir,
            &format!("tags_{split}.json"),
            "ground-truth tags per image",
            &tag_rows,
            &mut files,
        )?;
    }
    write_json(
        dir,
        "instances.json",
        "COCO instances (RefCOCO instances.json)",
        &CocoInstances {
            info: info(cfg, "instances"),
            images: all_images,
            annotations: instances,
            categories: Shape::ALL
                .iter()
                .map(|s| CocoCategory {
                    id: s.category_id(),
                    name: s.name().into(),
                    supercategory: "shape".into(),
                })
                .collect(),
        },
        &mut files,
    )?;
    write_json(
        dir,
        "refs.json",
        "RefCOCO refs as JSON (refs(unc).p is a pickle upstream)",
        &refs,
        &mut files,
    )?;
    let mut tag_text = vocab.join("\n");
    tag_text.push('\n');
    write_file(
        dir,
        "tag_list.txt",
        "tag vocabulary, one per line",
        tag_text.as_bytes(),
        &mut files,
    )?;

    let mut img_digest = Vec::with_capacity(rendered.len() * 8);
    let mut img_bytes = 0;
    for (_, h, b) in &rendered {
        img_digest.extend_from_slice(&h.to_le_bytes());
        img_bytes += b;
    }
    let images = ImagesEntry {
        pattern: "images/{split}/{image_id:06}.png".into(),
        count: rendered.len(),
        bytes: img_bytes,
        fnv1a64: format!("{:016x}", fnv1a64(&img_digest)),
    };
    let mut all_digest: Vec<u8> = files.iter().flat_map(|f| f.fnv1a64.bytes()).collect();
    all_digest.extend(images.fnv1a64.bytes());
    let manifest = Manifest {
        name: "ShapesWorld".into(),
        generator: "lion-data world (lion world generate)".into(),
        generator_version: GENERATOR_VERSION,
        seed: cfg.seed,
        width: w,
        height: h,
        questions_per_image: cfg.questions_per_image,
        note: "Paths are relative to this directory. Same seed, settings and generator version \
               give the same bytes. refs.json holds RefCOCO's refs(unc).p records as JSON."
            .into(),
        splits,
        vocabulary: Vocabulary {
            shapes: Shape::ALL.iter().map(|s| s.name().into()).collect(),
            colors: Color::ALL.iter().map(|c| c.name().into()).collect(),
            sizes: Size::ALL.iter().map(|s| s.name().into()).collect(),
            textures: Texture::ALL.iter().map(|t| t.name().into()).collect(),
            tags: vocab.len(),
        },
        files,
        images,
        digest: format!("{:016x}", fnv1a64(&all_digest)),
    };
    let mut bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| WorldError::Output {
        path: dir.join("world.json"),
        msg: e.to_string(),
    })?;
    bytes.push(b'\n');
    let path = dir.join("world.json");
    std::fs::write(&path, &bytes).map_err(io_err(&path))?;
    Ok(manifest)
}
