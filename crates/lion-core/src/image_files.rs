//! Image inputs of the batch commands (`lion tag`, `lion caption`): files, folders of images,
//! and list files.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// File extensions taken from a folder (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "bmp", "gif", "webp", "tif", "tiff"];

/// Expands `inputs` (image files, taken as given, and folders, whose image files are taken in
/// sorted order, not recursively) and then the `list` file (one path a line, relative to the
/// list's folder; empty lines and `#` comments skipped) into image paths.
pub fn collect_images(inputs: &[PathBuf], list: Option<&Path>) -> Result<Vec<PathBuf>> {
    let mut out = vec![];
    for input in inputs {
        if input.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(input)
                .map_err(|e| Error::io(input, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_lowercase().as_str()))
                })
                .collect();
            files.sort();
            if files.is_empty() {
                tracing::warn!("no images in folder {}", input.display());
            }
            out.extend(files);
        } else {
            out.push(input.clone());
        }
    }
    if let Some(list) = list {
        let f = std::fs::File::open(list).map_err(|e| Error::io(list, e))?;
        let base = list.parent().unwrap_or(Path::new("."));
        for (i, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| Error::format(list, format!("line {}: {e}", i + 1)))?;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let p = PathBuf::from(line);
            out.push(if p.is_relative() { base.join(p) } else { p });
        }
    }
    Ok(out)
}
