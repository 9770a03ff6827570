//! A ShapesWorld split as tagger data: the tag vocabulary, each image's target tags, the images,
//! and the tag groups the report breaks scores down by.

use super::*;

/// One split of a world: image ids, files and ground-truth tag indices.
#[derive(Debug, Clone)]
pub struct WorldSplit {
    pub name: String,
    pub ids: Vec<u64>,
    /// `file_name` as the world gives it (relative to the world directory).
    pub file_names: Vec<String>,
    pub targets: Vec<Vec<usize>>,
}

impl WorldSplit {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A world's tag vocabulary (`tag_list.txt`, one tag a line).
pub fn read_world_tags(world: &Path) -> Result<Vec<String>> {
    let path = world.join("tag_list.txt");
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::format(
            &path,
            format!("cannot read the world's tag list ({e}); is this a ShapesWorld folder (lion world generate)?"),
        )
    })?;
    let tags: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .filter(|l| !l.is_empty())
        .collect();
    if tags.is_empty() {
        return Err(Error::format(&path, "no tags"));
    }
    Ok(tags)
}

#[derive(Deserialize)]
pub(super) struct TagEntry {
    image_id: u64,
    file_name: String,
    tags: Vec<String>,
}

/// Reads `tags_{split}.json`, mapping tag names through `index` (an unknown tag is an error).
pub fn read_world_split(
    world: &Path,
    split: &str,
    index: &HashMap<String, usize>,
) -> Result<WorldSplit> {
    let path = world.join(format!("tags_{split}.json"));
    let text = std::fs::read_to_string(&path).map_err(|e| {
        Error::format(
            &path,
            format!("cannot read the {split} split's tags ({e}); is this a ShapesWorld folder (lion world generate)?"),
        )
    })?;
    let entries: Vec<TagEntry> = serde_json::from_str(&text).map_err(|e| {
        Error::format(
            &path,
            format!("expected a list of {{image_id, file_name, tags}}: {e}"),
        )
    })?;
    let mut out = WorldSplit {
        name: split.to_string(),
        ids: vec![],
        file_names: vec![],
        targets: vec![],
    };
    for (i, e) in entries.into_iter().enumerate() {
        let targets = e
            .tags
            .iter()
            .map(|t| {
                index.get(t).copied().ok_or_else(|| {
                    Error::format(
                        &path,
                        format!(
                            "entry {i} (image {}): tag `{t}` is not in tag_list.txt",
                            e.image_id
                        ),
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.ids.push(e.image_id);
        out.file_names.push(e.file_name);
        out.targets.push(targets);
    }
    Ok(out)
}

/// Loads a split's images at `size` (as `lion tag` does): (3, size, size) each, in split order.
pub fn load_split_images(
    world: &Path,
    split: &WorldSplit,
    size: usize,
    dev: &Device,
) -> Result<Vec<Tensor>> {
    split
        .file_names
        .par_iter()
        .map(|f| load_image(&world.join(f), size, dev))
        .collect()
}

/// Tag groups of ShapesWorld's vocabulary (from `world.json`): `shape`, `color`, `size`,
/// `color_shape`, `texture`, `count`, `other`; an empty map without a readable `world.json`.
pub fn tag_groups(world: &Path, tags: &[String]) -> BTreeMap<String, Vec<usize>> {
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let manifest: lion_data::world::formats::Manifest =
        match lion_core::util::read_json(world.join("world.json")) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("no per-group metrics: {e}");
                return groups;
            }
        };
    let v = &manifest.vocabulary;
    let has = |list: &[String], w: &str| list.iter().any(|x| x == w);
    for (i, t) in tags.iter().enumerate() {
        let words: Vec<&str> = t.split(' ').collect();
        let g = if has(&v.shapes, t) {
            "shape"
        } else if has(&v.colors, t) {
            "color"
        } else if has(&v.sizes, t) {
            "size"
        } else if has(&v.textures, t) {
            "texture"
        } else if words.len() == 2 && has(&v.colors, words[0]) && has(&v.shapes, words[1]) {
            "color_shape"
        } else if ["one", "two", "three", "four"].contains(&t.as_str()) {
            "count"
        } else {
            "other"
        };
        groups.entry(g.to_string()).or_default().push(i);
    }
    groups
}
