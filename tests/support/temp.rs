//! Temporary directories removed on drop, without the `tempfile` crate.
//!
//! Directories are created with mode 0755 (not the umask's 0700 variants) because a
//! server running as root hands parts of them to the unprivileged `postgres` account,
//! which must be able to traverse every parent of its cluster directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A directory under the system temp dir (or a chosen parent), removed with its
/// contents when dropped.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<temp dir>/<prefix>-<random>` with mode 0755.
    pub fn new(prefix: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), prefix)
    }

    /// Creates `<parent>/<prefix>-<random>` with mode 0755. Use a short parent such as
    /// `/tmp` when the path must stay short (PostgreSQL's socket path limit).
    pub fn new_in(parent: &Path, prefix: &str) -> TempDir {
        loop {
            let path = parent.join(format!("{prefix}-{:016x}", rand::random::<u64>()));
            match std::fs::create_dir(&path) {
                Ok(()) => {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                        .unwrap_or_else(|e| panic!("chmod 0755 {}: {e}", path.display()));
                    return TempDir { path };
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => panic!("creating temp dir {}: {e}", path.display()),
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        match std::fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => eprintln!("warning: cannot remove {}: {e}", self.path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_dir_is_0755_and_removed_on_drop() {
        let dir = TempDir::new("provisioning-temp-test");
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("f"), "x").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
        drop(dir);
        assert!(!path.exists());
    }
}
