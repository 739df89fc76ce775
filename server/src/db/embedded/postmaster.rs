//! Whether a cluster's postmaster is alive, read from `<pgdata>/postmaster.pid` the way
//! `pg_ctl status` reads it, plus the one case PostgreSQL cannot recover from alone.
//!
//! A postmaster started by `pg_ctl` is orphaned at once, so its parent is init. Where
//! init never reaps (some containers, some sandboxes), a killed postmaster stays a
//! zombie: `kill(pid, 0)` still succeeds, `pg_ctl status` calls it running, and a new
//! postmaster refuses to start over its lock files (`postmaster.pid` and the socket's
//! `.s.PGSQL.<port>.lock`). So a zombie counts as dead here, and [`clear_zombie_locks`]
//! removes its lock files, but only once no process holds the old cluster's shared
//! memory any more: that is the check PostgreSQL itself makes before replacing a stale
//! lock file, and what keeps two postmasters' processes from ever writing the same data
//! files.

use std::io::ErrorKind;
use std::path::Path;

use super::{io_err, EmbeddedError};

/// What `postmaster.pid` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Postmaster {
    /// No lock file: the cluster is stopped (cleanly, or it never started).
    Stopped,
    /// The process the lock file names is alive (or the file cannot be read yet, as
    /// while a postmaster writes it: never taken for dead on a guess).
    Running,
    /// The lock file names a process that has exited.
    Dead {
        /// The dead postmaster's PID.
        pid: i32,
        /// Whether it is a zombie nobody reaps (PostgreSQL would take it for alive).
        zombie: bool,
    },
}

/// Reads the lock file of the cluster in `cluster_dir` and checks its process.
pub fn inspect(cluster_dir: &Path) -> Postmaster {
    let text = match std::fs::read_to_string(cluster_dir.join("postmaster.pid")) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => return Postmaster::Stopped,
        Err(_) => return Postmaster::Running,
    };
    let Some(pid) = text
        .lines()
        .next()
        .and_then(|line| line.trim().parse::<i32>().ok())
        .filter(|&pid| pid > 0)
    else {
        return Postmaster::Running;
    };
    // SAFETY: signal 0 sends nothing; it only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        Postmaster::Dead { pid, zombie: false }
    } else if is_zombie(pid) {
        Postmaster::Dead { pid, zombie: true }
    } else {
        Postmaster::Running
    }
}

/// Whether `pid` has exited and waits to be reaped (Linux `/proc`; elsewhere `false`).
fn is_zombie(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "<pid> (<comm>) <state> ...": the command may hold spaces and parentheses.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next())
        .is_some_and(|state| state == 'Z' || state == 'X')
}

/// Removes the lock files of a zombie postmaster (`pid`) so that `pg_ctl start` can
/// start a new one; refuses while processes of the old cluster are still attached to
/// its shared memory (they exit by themselves once they notice the postmaster's death).
pub fn clear_zombie_locks(cluster_dir: &Path, pid: i32) -> Result<(), EmbeddedError> {
    let path = cluster_dir.join("postmaster.pid");
    let text =
        std::fs::read_to_string(&path).map_err(io_err(format!("reading {}", path.display())))?;
    // Line 7: "<shared memory key> <shared memory id>" (absent if the postmaster died
    // before creating the segment).
    let shm_id = text
        .lines()
        .nth(6)
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|id| id.parse::<libc::c_int>().ok());
    if shm_id.is_some_and(shared_memory_in_use) {
        return Err(EmbeddedError::StillAttached { pid });
    }
    tracing::warn!(postmaster.pid = pid, cluster_dir = %cluster_dir.display(),
        "the dead postmaster is a zombie nobody reaps; removing its lock files");
    // The socket's lock first: while postmaster.pid remains, a failure here is retried
    // from the start.
    let entries = std::fs::read_dir(cluster_dir)
        .map_err(io_err(format!("listing {}", cluster_dir.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("listing {}", cluster_dir.display())))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(".s.PGSQL.") && name.ends_with(".lock") && names_pid(&entry.path(), pid)
        {
            std::fs::remove_file(entry.path())
                .map_err(io_err(format!("removing {}", entry.path().display())))?;
        }
    }
    std::fs::remove_file(&path).map_err(io_err(format!("removing {}", path.display())))
}

/// Whether the lock file at `path` names process `pid` on its first line.
fn names_pid(path: &Path, pid: i32) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok())
        == Some(pid)
}

/// Whether any process is attached to System V shared memory segment `id`. A segment
/// that is gone is not in use; one that cannot be inspected is, as in PostgreSQL.
fn shared_memory_in_use(id: libc::c_int) -> bool {
    // SAFETY: shmid_ds is plain data; shmctl(IPC_STAT) fills it or fails.
    let mut ds: libc::shmid_ds = unsafe { std::mem::zeroed() };
    if unsafe { libc::shmctl(id, libc::IPC_STAT, &mut ds) } != 0 {
        let gone = matches!(
            std::io::Error::last_os_error().raw_os_error(),
            Some(libc::EINVAL) | Some(libc::EIDRM)
        );
        return !gone;
    }
    ds.shm_nattch > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_lock_file_means_stopped_and_a_live_pid_means_running() {
        let dir = std::env::temp_dir().join(format!(
            "provisiond-postmaster-test-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir(&dir).expect("creating a temp dir");
        assert_eq!(inspect(&dir), Postmaster::Stopped);
        std::fs::write(
            dir.join("postmaster.pid"),
            format!("{}\n", std::process::id()),
        )
        .expect("writing a lock file");
        assert_eq!(inspect(&dir), Postmaster::Running);
        // Half-written: never taken for dead.
        std::fs::write(dir.join("postmaster.pid"), "").expect("emptying the lock file");
        assert_eq!(inspect(&dir), Postmaster::Running);
        std::fs::remove_dir_all(&dir).expect("removing the temp dir");
    }
}
