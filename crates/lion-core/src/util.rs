//! Small helpers shared across the crate: atomic file writes, bounded line reading.

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

/// One line of a text file read by [`BoundedLines`]: its text, or why that line is unusable
/// (longer than the bound, not UTF-8). Either way the next line is read normally.
pub type LineResult = std::result::Result<String, String>;

/// Longest run of bytes skipped looking for the end of an over-long line before the file is
/// given up (a "line" that never ends, such as `/dev/zero`).
pub const MAX_SKIP: u64 = 64 << 20;

/// Lines of a reader, each at most `max` bytes held in memory: an over-long or non-UTF-8 line
/// is reported as that line's error and skipped, so one bad line costs only itself. Yields
/// `(1-based line number, line)`; an I/O error, or an over-long line with no end within
/// [`MAX_SKIP`] bytes, ends the iteration with `Err`. The line's `\n` (and a `\r` before it)
/// is removed.
pub struct BoundedLines<R> {
    reader: R,
    max: usize,
    line: usize,
    done: bool,
}

impl<R: std::io::BufRead> BoundedLines<R> {
    pub fn new(reader: R, max: usize) -> Self {
        Self {
            reader,
            max,
            line: 0,
            done: false,
        }
    }

    fn next_line(&mut self) -> std::io::Result<Option<LineResult>> {
        let mut buf: Vec<u8> = Vec::new();
        let mut skipped: u64 = 0;
        let mut any = false;
        loop {
            let chunk = self.reader.fill_buf()?;
            if chunk.is_empty() {
                break;
            }
            any = true;
            let (part, found) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (&chunk[..i], Some(i + 1)),
                None => (chunk, None),
            };
            if skipped == 0 && buf.len() + part.len() <= self.max {
                buf.extend_from_slice(part);
            } else {
                skipped += (buf.len() + part.len()) as u64;
                buf.clear();
                if skipped > MAX_SKIP {
                    return Err(std::io::Error::other(format!(
                        "line {} is longer than {} bytes and has no end within {} MiB",
                        self.line + 1,
                        self.max,
                        MAX_SKIP >> 20
                    )));
                }
            }
            let used = found.unwrap_or(chunk.len());
            self.reader.consume(used);
            if found.is_some() {
                break;
            }
        }
        if !any {
            return Ok(None);
        }
        self.line += 1;
        if skipped > 0 {
            return Ok(Some(Err(format!(
                "line is longer than the {} bytes allowed",
                self.max
            ))));
        }
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        Ok(Some(String::from_utf8(buf).map_err(|e| {
            format!(
                "line is not valid UTF-8 (byte {})",
                e.utf8_error().valid_up_to()
            )
        })))
    }
}

impl<R: std::io::BufRead> Iterator for BoundedLines<R> {
    type Item = std::io::Result<(usize, LineResult)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_line() {
            Ok(Some(l)) => Some(Ok((self.line, l))),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Tunes glibc's malloc for tensor work; call once at program start, before other threads.
///
/// glibc serves every buffer above its mmap threshold (128 KiB, growing only as such buffers are
/// freed) with a fresh `mmap`, and trims the heap top as soon as 128 KiB are free. A forward pass
/// allocates and frees tensors of a few MiB per op, so each op page-faulted and zeroed its output
/// anew: on the base T5 encoder ~100k faults (~400 MB zeroed) per call, about a quarter of its
/// time (`perf stat -e page-faults`). Buffers up to 32 MiB (glibc's largest allowed threshold)
/// now come from the heap, and up to 512 MiB of free heap top is kept for reuse; beyond that the
/// heap is trimmed as before, so a one-off spike is still given back (a training run keeps it
/// all while its [`crate::alloc::KeepLargeBlocks`] guard lives). No-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
    }
    crate::alloc::set_trim_threshold(TRIM_THRESHOLD);
}

/// The free heap top glibc keeps after [`tune_allocator`] (outside training).
pub const TRIM_THRESHOLD: usize = 512 << 20;

/// Gives free heap memory back to the OS (the large blocks [`crate::alloc`] keeps, then
/// `malloc_trim(0)`), e.g. between benchmark stages so that each stage's peak RSS is its own.
pub fn release_free_memory() {
    crate::alloc::release_cached();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns unused pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(bytes: &[u8], max: usize) -> Vec<std::io::Result<(usize, LineResult)>> {
        // A tiny buffer so lines straddle reads.
        BoundedLines::new(std::io::BufReader::with_capacity(3, bytes), max).collect()
    }

    #[test]
    fn bad_lines_cost_only_themselves() {
        let got = lines(b"ab\r\n\xff\xfe\n0123456789\nlast", 5);
        let got: Vec<(usize, LineResult)> = got.into_iter().map(|r| r.unwrap()).collect();
        assert_eq!(got[0], (1, Ok("ab".into())));
        assert!(got[1].1.as_ref().unwrap_err().contains("UTF-8"));
        assert!(got[2].1.as_ref().unwrap_err().contains("longer than"));
        assert_eq!(got[3], (4, Ok("last".into())));
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn a_line_without_end_stops_after_the_skip_limit() {
        let zeros = std::io::Read::take(std::io::repeat(0), MAX_SKIP + (1 << 20));
        let mut it = BoundedLines::new(std::io::BufReader::new(zeros), 1024);
        let e = it.next().unwrap().unwrap_err();
        assert!(e.to_string().contains("no end"), "{e}");
        assert!(it.next().is_none());
    }
}
