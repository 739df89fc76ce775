//! A streaming standby of a test's own cluster, made at test time as an operator makes
//! one: `pg_basebackup -R` from the primary, started with `pg_ctl` on its own Unix
//! socket. Stopped (immediately) when dropped.

use std::path::{Path, PathBuf};

use provisioning_server::db::embedded::EmbeddedPostgres;

/// A running standby.
pub struct Standby {
    /// URL of the service's database on the standby.
    pub url: String,
    dir: PathBuf,
    stop: std::process::Command,
}

impl Standby {
    /// Copies `primary` into `parent/standby` and starts it as a hot standby streaming
    /// from it. Blocking: call it from `spawn_blocking`.
    pub fn start(primary: &EmbeddedPostgres, parent: &Path) -> Standby {
        let dir = parent.join("standby");
        std::fs::create_dir(&dir).expect("the standby directory");
        // The cluster's account (postgres, when the tests run as root) owns it.
        let owner = std::fs::metadata(primary.cluster_dir()).expect("the primary's directory");
        std::os::unix::fs::chown(&dir, Some(owner_uid(&owner)), Some(owner_gid(&owner)))
            .expect("chown the standby directory");
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod the standby directory");
        let copied = primary
            .command("pg_basebackup")
            .arg("-D")
            .arg(&dir)
            .args(["-R", "-X", "stream", "-U", "provisioning", "-h"])
            .arg(primary.cluster_dir())
            .output()
            .expect("running pg_basebackup");
        assert!(
            copied.status.success(),
            "pg_basebackup: {}",
            String::from_utf8_lossy(&copied.stderr)
        );
        // The primary's socket lives in its data directory: the copy holds its lock file.
        for entry in std::fs::read_dir(&dir).expect("the standby directory") {
            let path = entry.expect("an entry").path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".s.PGSQL."))
            {
                std::fs::remove_file(&path).expect("removing the copied socket lock");
            }
        }
        let options = format!(
            "-c listen_addresses='' -k '{}' -c hot_standby=on -c max_connections=300",
            dir.display()
        );
        let started = primary
            .command("pg_ctl")
            .args(["start", "-w", "-D"])
            .arg(&dir)
            .arg("-l")
            .arg(dir.join("standby.log"))
            .args(["-o", &options])
            .output()
            .expect("running pg_ctl start");
        assert!(
            started.status.success(),
            "starting the standby: {}{}",
            String::from_utf8_lossy(&started.stdout),
            std::fs::read_to_string(dir.join("standby.log")).unwrap_or_default()
        );
        let mut stop = primary.command("pg_ctl");
        stop.args(["stop", "-m", "immediate", "-D"]).arg(&dir);
        Standby {
            url: format!(
                "postgres://provisioning@localhost/provisioning?host={}",
                dir.display()
            ),
            dir,
            stop,
        }
    }

    /// The standby's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        if let Err(error) = self.stop.output() {
            eprintln!("warning: stopping the standby: {error}");
        }
    }
}

fn owner_uid(metadata: &std::fs::Metadata) -> u32 {
    std::os::unix::fs::MetadataExt::uid(metadata)
}

fn owner_gid(metadata: &std::fs::Metadata) -> u32 {
    std::os::unix::fs::MetadataExt::gid(metadata)
}
