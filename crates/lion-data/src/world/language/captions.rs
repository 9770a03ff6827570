//! Captions of a scene: five per image from varied templates.

use super::*;

/// Five captions from distinct templates: full descriptions, counts, the most salient object only,
/// spatial relations, colors only, background first, synonyms, positions.
pub fn captions(scene: &Scene, rng: &mut Rng) -> Vec<String> {
    let mut templates: Vec<usize> = (0..8).collect();
    rng.shuffle(&mut templates);
    templates.truncate(5);
    let mut out: Vec<String> = Vec::with_capacity(5);
    for t in templates {
        let mut c = caption_template(scene, rng, t);
        if out.contains(&c) {
            c = caption_template(scene, rng, 0);
        }
        if rng.chance(0.3) {
            let mut chars = c.chars();
            if let Some(first) = chars.next() {
                c = format!("{}{}.", first.to_uppercase(), chars.as_str());
            }
        }
        out.push(c);
    }
    out
}

pub(super) fn caption_template(scene: &Scene, rng: &mut Rng, template: usize) -> String {
    let objs = &scene.objects;
    let n = objs.len();
    let bg = *rng.pick(scene.background.texture.phrases());
    let mut order: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut order);
    match template {
        // Everything, grouped: "two small red circles and a large blue star on a striped background"
        0 => {
            let parts: Vec<String> = groups(scene)
                .iter()
                .map(|(d, k)| group_phrase(d, *k))
                .collect();
            format!("{} {bg}", join_list(&parts))
        }
        // Counting
        1 => {
            if n == 1 {
                let o = &objs[0];
                format!("a single {} {} {bg}", o.color.name(), o.shape.name())
            } else {
                let noun = *rng.pick(&["shapes", "objects", "figures"]);
                if rng.chance(0.5) {
                    format!("{} {noun} {bg}", COUNT_WORDS[n])
                } else {
                    let parts: Vec<String> = order
                        .iter()
                        .map(|&k| with_article(objs[k].shape.name()))
                        .collect();
                    format!("{} {noun}: {}", COUNT_WORDS[n], join_list(&parts))
                }
            }
        }
        // The most salient (largest visible) object only
        2 => {
            let big = (0..n).max_by_key(|&k| (objs[k].area, n - k)).unwrap_or(0);
            let words = with_article(&object_words(rng, &objs[big], true, 0.6));
            match n {
                1 => format!("{words} {bg}"),
                2 => format!("{words} and another shape"),
                _ => format!("{words} among {} other shapes", COUNT_WORDS[n - 1]),
            }
        }
        // A spatial relation
        3 => {
            for &a in &order {
                for &b in &order {
                    if a == b {
                        continue;
                    }
                    if let Some(rel) = clear_relation(scene, &objs[a], &objs[b]) {
                        return format!(
                            "{} {rel} {}",
                            with_article(&object_words(rng, &objs[a], false, 0.8)),
                            with_article(&object_words(rng, &objs[b], false, 0.8))
                        );
                    }
                }
            }
            let o = &objs[order[0]];
            match scene.grid_cell(o, 0.0) {
                Some((c, r)) if n == 1 => format!(
                    "{} in the {} of the image",
                    with_article(&object_words(rng, o, true, 0.8)),
                    position_word(c, r)
                ),
                _ => format!(
                    "{} close to each other",
                    join_list(
                        &order
                            .iter()
                            .map(|&k| with_article(&object_words(rng, &objs[k], false, 0.8)))
                            .collect::<Vec<_>>()
                    )
                ),
            }
        }
        // Colors only
        4 => {
            let mut colors: Vec<&str> = Vec::new();
            for &k in &order {
                let c = objs[k].color.name();
                if !colors.contains(&c) {
                    colors.push(c);
                }
            }
            let colors: Vec<String> = colors.iter().map(|c| c.to_string()).collect();
            if n == 1 {
                format!("{} shape {bg}", with_article(&colors[0]))
            } else if colors.len() == 1 {
                format!("{} {} shapes {bg}", COUNT_WORDS[n], colors[0])
            } else if rng.chance(0.5) {
                format!("{} shapes {bg}", join_list(&colors))
            } else {
                format!("some colorful shapes: {}", join_list(&colors))
            }
        }
        // Background first
        5 => {
            let parts: Vec<String> = order
                .iter()
                .map(|&k| with_article(&object_words(rng, &objs[k], false, 0.7)))
                .collect();
            format!(
                "a {} background with {}",
                scene.background.texture.adjective(),
                join_list(&parts)
            )
        }
        // Synonym-heavy
        6 => {
            let parts: Vec<String> = order
                .iter()
                .map(|&k| with_article(&object_words(rng, &objs[k], true, 0.2)))
                .collect();
            join_list(&parts)
        }
        // Positions of each object
        _ => {
            let parts: Vec<String> = order
                .iter()
                .map(|&k| {
                    let o = &objs[k];
                    let np = with_article(&object_words(rng, o, false, 0.8));
                    match scene.grid_cell(o, 0.0) {
                        Some((c, r)) => {
                            let w = position_word(c, r);
                            if w == "center" {
                                format!("{np} in the center")
                            } else if w == "left" || w == "right" {
                                format!("{np} on the {w}")
                            } else {
                                format!("{np} at the {w}")
                            }
                        }
                        None => np,
                    }
                })
                .collect();
            join_list(&parts)
        }
    }
}
