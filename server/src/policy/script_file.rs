//! Which script files may run, and as whom.
//!
//! A script, and every directory from the scripts directory down to it, must be owned
//! by a trusted account (root, the account `provisiond` runs as, or the script user)
//! and must not be writable by group or others: otherwise someone else could change
//! what runs, as ssh refuses such `authorized_keys` and sudo such `sudoers` files. The
//! check runs at Create/Update and again before every run (see
//! `domain::handlers::resolve_script`, which walks the path and calls [`check_entry`]).
//!
//! When `provisiond` runs as root, scripts run as the script user (`--script-user`,
//! default `nobody`): its uid and gid are resolved once at start ([`lookup_account`])
//! and set in the child; supplementary groups are dropped (the standard library calls
//! `setgroups(0)` before `setuid` when the parent is root). Otherwise scripts run as
//! the account `provisiond` runs as, which cannot switch.

use std::ffi::CString;
use std::path::Path;

/// The account scripts run as, and who may own them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptAccess {
    /// `(uid, gid)` to switch to before running a script; `None` when `provisiond` is
    /// not root (it runs scripts as itself).
    pub run_as: Option<(u32, u32)>,
    /// Uids that may own scripts and the directories leading to them.
    pub trusted_owners: Vec<u32>,
}

impl ScriptAccess {
    /// Scripts run as the current account (not root), owned by root or by it.
    pub fn current() -> ScriptAccess {
        // SAFETY: geteuid cannot fail.
        let euid = unsafe { libc::geteuid() };
        ScriptAccess {
            run_as: None,
            trusted_owners: dedup(vec![0, euid]),
        }
    }

    /// For a server with effective uid `euid`: as root, scripts run as `script_user`
    /// (which must exist); otherwise as `euid`.
    pub fn for_service(euid: u32, script_user: &str) -> Result<ScriptAccess, String> {
        if euid != 0 {
            return Ok(ScriptAccess {
                run_as: None,
                trusted_owners: dedup(vec![0, euid]),
            });
        }
        match lookup_account(script_user)? {
            Some((0, _)) => Err(format!(
                "--script-user {script_user:?} is root: scripts must run as an unprivileged account"
            )),
            Some((uid, gid)) => Ok(ScriptAccess {
                run_as: Some((uid, gid)),
                trusted_owners: dedup(vec![0, uid]),
            }),
            None => Err(format!(
                "--script-user {script_user:?}: no such account; provisiond runs as root and \
                 runs scripts as that account (create it, or choose an existing unprivileged \
                 account with --script-user)"
            )),
        }
    }
}

fn dedup(mut uids: Vec<u32>) -> Vec<u32> {
    uids.sort_unstable();
    uids.dedup();
    uids
}

/// Whether a file or directory may lead to a script: owned by one of `trusted` and not
/// writable by group or others. `mode` is `st_mode`, `uid` the owner.
pub fn check_entry(path: &Path, uid: u32, mode: u32, trusted: &[u32]) -> Result<(), String> {
    if mode & 0o022 != 0 {
        let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
            (true, true) => "group and others",
            (true, false) => "its group",
            _ => "others",
        };
        return Err(format!(
            "{} is writable by {who} (mode {:04o}): refused, as ssh and sudo refuse such \
             files; chmod go-w it",
            path.display(),
            mode & 0o7777
        ));
    }
    if !trusted.contains(&uid) {
        let owners = trusted
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        return Err(format!(
            "{} is owned by uid {uid}: scripts and their directories must be owned by root, \
             the account provisiond runs as or the script user (uids {owners})",
            path.display()
        ));
    }
    Ok(())
}

/// The uid and gid of account `name` (`getpwnam_r`), `None` when there is none.
pub fn lookup_account(name: &str) -> Result<Option<(u32, u32)>, String> {
    let cname = CString::new(name).map_err(|_| format!("{name:?} is not an account name"))?;
    let mut buffer = vec![0u8; 1024];
    loop {
        // SAFETY: zeroed `passwd` is a valid out-parameter; getpwnam_r writes its strings
        // into `buffer`, which outlives the call; we copy out only the integer ids.
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe {
            libc::getpwnam_r(
                cname.as_ptr(),
                &mut entry,
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 2, 0);
            continue;
        }
        if rc != 0 {
            return Err(format!(
                "looking up account {name:?}: {}",
                std::io::Error::from_raw_os_error(rc)
            ));
        }
        if found.is_null() {
            return Ok(None);
        }
        return Ok(Some((entry.pw_uid, entry.pw_gid)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRUSTED: [u32; 2] = [0, 65534];

    fn check(uid: u32, mode: u32) -> Result<(), String> {
        check_entry(Path::new("/s/x.sh"), uid, mode, &TRUSTED)
    }

    #[test]
    fn trusted_owners_with_no_group_or_other_write_pass() {
        assert_eq!(check(0, 0o100755), Ok(()));
        assert_eq!(check(65534, 0o100700), Ok(()));
        assert_eq!(check(0, 0o040755), Ok(()));
        assert_eq!(check(0, 0o104755), Ok(()), "setuid is not our concern");
    }

    #[test]
    fn group_or_world_writable_entries_are_refused() {
        let err = check(0, 0o100775).unwrap_err();
        assert!(
            err.contains("/s/x.sh is writable by its group (mode 0775)"),
            "{err}"
        );
        let err = check(0, 0o100757).unwrap_err();
        assert!(err.contains("writable by others (mode 0757)"), "{err}");
        let err = check(0, 0o041777).unwrap_err();
        assert!(err.contains("group and others (mode 1777)"), "{err}");
    }

    #[test]
    fn untrusted_owners_are_refused() {
        let err = check(1000, 0o100755).unwrap_err();
        assert!(err.contains("owned by uid 1000"), "{err}");
        assert!(err.contains("uids 0, 65534"), "{err}");
    }

    #[test]
    fn accounts_resolve_and_missing_ones_are_none() {
        assert_eq!(lookup_account("root"), Ok(Some((0, 0))));
        assert_eq!(lookup_account("no-such-account-provisiond"), Ok(None));
        assert!(lookup_account("a\0b").is_err());
    }

    #[test]
    fn root_needs_an_existing_unprivileged_script_user() {
        assert!(ScriptAccess::for_service(0, "root")
            .unwrap_err()
            .contains("unprivileged"));
        assert!(ScriptAccess::for_service(0, "no-such-account-provisiond")
            .unwrap_err()
            .contains("no such account"));
        let other = ScriptAccess::for_service(1000, "no-such-account-provisiond").unwrap();
        assert_eq!(other.run_as, None);
        assert_eq!(other.trusted_owners, [0, 1000]);
    }
}
