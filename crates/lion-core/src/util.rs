//! Small helpers shared across the crate: atomic file writes.

use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// A temporary path beside `path` (same directory, so a rename is atomic).
pub fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".to_string());
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, synced, renamed.
/// A crash leaves either the old file or the new one, never half of one.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let path = path.as_ref();
    let tmp = temp_path(path);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Reads a JSON file into `T`, naming the file in any error.
pub fn read_json<T: serde::de::DeserializeOwned>(path: impl AsRef<Path>) -> Result<T> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::config(path.display(), e.to_string()))
}

/// Tunes glibc's malloc for tensor work; call once at program start, before other threads.
///
/// glibc serves every buffer above its mmap threshold (128 KiB, growing only as such buffers are
/// freed) with a fresh `mmap`, and trims the heap top as soon as 128 KiB are free. A forward pass
/// allocates and frees tensors of a few MiB per op, so each op page-faulted and zeroed its output
/// anew: on the base T5 encoder ~100k faults (~400 MB zeroed) per call, about a quarter of its
/// time (`perf stat -e page-faults`). Buffers up to 32 MiB (glibc's largest allowed threshold)
/// now come from the heap, and up to 512 MiB of free heap top is kept for reuse; beyond that the
/// heap is trimmed as before, so a one-off spike is still given back. No-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 512 << 20);
    }
}

/// Gives free heap memory back to the OS (`malloc_trim(0)`), e.g. between benchmark stages so
/// that each stage's peak RSS is its own. No-op off glibc.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused pages.
    unsafe {
        libc::malloc_trim(0);
    }
}
