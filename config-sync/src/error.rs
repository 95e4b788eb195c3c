//! Errors of config-sync: why an object was rejected, and why a source failed.

use std::path::PathBuf;

pub use dataplane::rejection::{ObjectError, Outcome, Rejection};

use dataplane::key::{Kind, ObjectKey};

/// An object's data parsed once per version: `last`, the previous parse and
/// the fingerprint of the data it came from, is reused when `print` is the
/// same; otherwise `parse` runs. A failure is rejected, naming the object
/// (`kind`, `object`), and falls back to `last` (`Outcome::LastGood`), or
/// to nothing (`Outcome::LeftOut`). Returns what to keep for the next build.
pub(crate) fn parse_or_last_good<V: Clone>(
    kind: Kind,
    object: &ObjectKey,
    print: u64,
    last: Option<&(u64, V)>,
    parse: impl FnOnce() -> Result<V, ObjectError>,
    rejected: &mut Vec<Rejection>,
) -> Option<(u64, V)> {
    if let Some(same) = last.filter(|(p, _)| *p == print) {
        return Some(same.clone());
    }
    match parse() {
        Ok(value) => Some((print, value)),
        Err(error) => {
            rejected.push(Rejection {
                kind,
                object: object.clone(),
                error,
                outcome: if last.is_some() {
                    Outcome::LastGood
                } else {
                    Outcome::LeftOut
                },
            });
            last.cloned()
        }
    }
}

/// Why a whole source read failed (the table keeps its last good version).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The snapshot file could not be read.
    #[error("cannot read snapshot file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The snapshot file is not valid YAML.
    #[error("snapshot file {path}:{line}:{column}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser said.
        message: String,
    },
    /// Watching the snapshot file failed.
    #[error("cannot watch snapshot file {path}: {message}")]
    Watch {
        /// The file.
        path: PathBuf,
        /// What the watcher said.
        message: String,
    },
}
