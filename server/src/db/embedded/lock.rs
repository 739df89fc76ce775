//! One owner per data directory: `<data-dir>/provisiond.lock`, held with an exclusive
//! `flock` for the owner's whole life, with the owner's PID written in it.
//!
//! The kernel releases a `flock` when the open file's last descriptor closes, so a
//! killed owner (SIGKILL included) frees its directory at once: no stale PID has to be
//! guessed, and two processes racing for the lock cannot both win. The PID in the file
//! only names the owner in the message a refused process prints. The descriptor is
//! close-on-exec (std opens every file so): `pg_ctl`, the postmaster it leaves running
//! and script handlers never inherit the lock, so a cluster that outlives a killed owner
//! does not keep its directory locked.
//!
//! The file is never removed: removing it would let a process lock an unlinked file
//! while another creates and locks a new one, two owners at once.

use std::fs::File;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use super::{io_err, EmbeddedError};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "provisiond.lock";

/// How long a refused process waits for the owner to write its PID (the owner writes
/// it right after taking the lock: only a start racing ours can see the file empty).
const PID_WAIT: Duration = Duration::from_secs(1);

/// Who holds a data directory, as its lock file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockOwner {
    /// The owner's PID; `None` when the file names no live process (the owner took the
    /// lock a moment ago and has not written it yet).
    pub pid: Option<u32>,
}

impl std::fmt::Display for LockOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.pid {
            Some(pid) => write!(f, "provisiond PID {pid}"),
            None => f.write_str("another provisiond (its PID is not recorded yet)"),
        }
    }
}

/// The exclusive lock on a data directory; released when dropped (the file closes).
#[derive(Debug)]
pub struct DataDirLock {
    /// Kept open: closing it releases the lock.
    _file: File,
}

impl DataDirLock {
    /// Takes the lock on `data_dir` (which must exist) without waiting and records this
    /// process's PID in it; [`EmbeddedError::InUse`] names the owner if another process
    /// holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, EmbeddedError> {
        let path = data_dir.join(LOCK_FILE);
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        loop {
            // SAFETY: flock on a descriptor this function owns.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                break;
            }
            let error = std::io::Error::last_os_error();
            match error.kind() {
                ErrorKind::Interrupted => continue,
                ErrorKind::WouldBlock => {
                    return Err(EmbeddedError::InUse {
                        data_dir: data_dir.to_path_buf(),
                        owner: read_owner(&path),
                    })
                }
                _ => return Err(io_err(format!("locking {}", path.display()))(error)),
            }
        }
        file.set_len(0)
            .and_then(|()| file.write_all_at(format!("{}\n", std::process::id()).as_bytes(), 0))
            .map_err(io_err(format!("writing the PID into {}", path.display())))?;
        Ok(DataDirLock { _file: file })
    }
}

/// The PID the lock file at `path` names, once it names a live process (a dead owner's
/// PID stays in the file until the next owner overwrites it, a moment after locking).
fn read_owner(path: &Path) -> LockOwner {
    let deadline = Instant::now() + PID_WAIT;
    loop {
        let pid = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok())
            .filter(|&pid| process_exists(pid));
        if pid.is_some() || Instant::now() >= deadline {
            return LockOwner { pid };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "provisiond-lock-test-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir(&dir).expect("creating a temp dir");
        dir
    }

    #[test]
    fn a_second_lock_on_one_directory_is_refused_naming_the_owner_until_the_first_is_dropped() {
        let dir = temp_dir();
        let first = DataDirLock::acquire(&dir).expect("the first lock");
        let recorded = std::fs::read_to_string(dir.join(LOCK_FILE)).expect("the lock file");
        assert_eq!(recorded, format!("{}\n", std::process::id()));

        // flock locks belong to the open file, so a second open in this process is
        // refused just as another process would be.
        match DataDirLock::acquire(&dir) {
            Err(EmbeddedError::InUse { data_dir, owner }) => {
                assert_eq!(data_dir, dir);
                assert_eq!(owner.pid, Some(std::process::id()));
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        let again = DataDirLock::acquire(&dir).expect("free again once dropped");
        drop(again);
        std::fs::remove_dir_all(&dir).expect("removing the temp dir");
    }

    #[test]
    fn the_refusal_says_which_process_to_stop_or_join() {
        let error = EmbeddedError::InUse {
            data_dir: PathBuf::from("/srv/d"),
            owner: LockOwner { pid: Some(42) },
        };
        assert_eq!(
            error.to_string(),
            "data directory /srv/d is in use by provisiond PID 42; choose another \
             --data-dir, or point --database-url at the running cluster"
        );
    }
}
