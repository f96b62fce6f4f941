//! `tamis check` as the service sees it: which of the files a config names (the config itself,
//! secrets, certificates, the CA file, the location database) the service's user could not
//! read, where root running `check` reads them all.
//!
//! The judgement is a pure function of each file's and each folder's mode bits, owner and
//! group ([`may_read`]) against the user's uid and groups as `/etc/passwd` and `/etc/group` give
//! them ([`Account::find`]); ACLs and users from other name services (LDAP) are not read. The
//! packaged unit's sandbox hides two places besides: a private `/tmp` and no home folders.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{Config, Problem};

/// The user the packaged service runs as (`User=` in deploy/systemd/tamis.service, created by
/// the Debian package).
pub const SERVICE_USER: &str = "tamis";

/// The config file the packaged service reads (its unit's `ExecStart`).
pub const SERVICE_CONFIG: &str = "/etc/tamis/tamis.toml";

/// A user as the kernel checks its file access: uid, primary group, supplementary groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub groups: Vec<u32>,
}

impl Account {
    /// The user `name` in the texts of `/etc/passwd` and `/etc/group`: its uid, its primary
    /// group and every group listing it as a member.
    pub fn find(name: &str, passwd: &str, group: &str) -> Option<Account> {
        let fields = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 4 && f[0] == name)?;
        let uid = fields[2].parse().ok()?;
        let mut groups = vec![fields[3].parse().ok()?];
        for g in group.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
            if g.len() >= 4 && g[3].split(',').any(|m| m.trim() == name) {
                if let Ok(gid) = g[2].parse() {
                    groups.push(gid);
                }
            }
        }
        Some(Account {
            name: name.to_owned(),
            uid,
            groups,
        })
    }

    /// The user `name` on this machine.
    pub fn lookup(name: &str) -> Option<Account> {
        let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
        let group = std::fs::read_to_string("/etc/group").unwrap_or_default();
        Account::find(name, &passwd, &group)
    }
}

/// What `who` may do with a file of this mode, owner and group: `bit` is 4 (read) or 1 (search
/// a folder). As the kernel does: the owner's bits for the owner (even when the group's would
/// allow more), else the group's for a member, else the others'; root may do anything.
pub fn may(mode: u32, owner: u32, group: u32, who: &Account, bit: u32) -> bool {
    if who.uid == 0 {
        return true;
    }
    let shift = if owner == who.uid {
        6
    } else if who.groups.contains(&group) {
        3
    } else {
        0
    };
    (mode >> shift) & bit != 0
}

/// Why `who` could not read `path` (the first folder it cannot enter, or the file itself), or
/// `None` when it can. A path that does not resolve is not judged: loading reported it.
pub fn may_read(path: &Path, who: &Account) -> Option<String> {
    let path = std::fs::canonicalize(path).ok()?;
    let mut folders: Vec<&Path> = path.ancestors().skip(1).collect();
    folders.reverse();
    for dir in folders {
        let m = std::fs::metadata(dir).ok()?;
        if !may(m.mode(), m.uid(), m.gid(), who, 1) {
            return Some(format!(
                "{} cannot enter {} (mode {:04o}, owner uid {}, group gid {})",
                who.name,
                dir.display(),
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ));
        }
    }
    let m = std::fs::metadata(&path).ok()?;
    (!may(m.mode(), m.uid(), m.gid(), who, 4)).then(|| {
        format!(
            "{} cannot read it (mode {:04o}, owner uid {}, group gid {})",
            who.name,
            m.mode() & 0o7777,
            m.uid(),
            m.gid()
        )
    })
}

/// Where the packaged unit's sandbox hides a file from the service, if it does.
pub fn hidden_by_sandbox(path: &Path) -> Option<&'static str> {
    let under = |dir: &str| path.starts_with(dir);
    if under("/tmp") || under("/var/tmp") {
        Some("the service has a /tmp and /var/tmp of its own (PrivateTmp=yes): it will not see this file")
    } else if under("/home") || under("/root") || under("/run/user") {
        Some("the service sees no home folder (ProtectHome=yes): it will not see this file")
    } else {
        None
    }
}

/// The warnings for a loaded config as the service's user `who` would load it: one per file
/// (the config itself first) it could not read, or, with `sandbox` (the packaged unit), would
/// not see.
pub fn findings(config: &Config, who: &Account, sandbox: bool) -> Vec<Problem> {
    let source = absolute(&config.source);
    let files = std::iter::once(("config".to_owned(), source.clone())).chain(
        config
            .files
            .iter()
            .map(|(key, path)| (key.clone(), absolute(path))),
    );
    let mut out = Vec::new();
    for (key, path) in files {
        let why = hidden_by_sandbox(&path)
            .filter(|_| sandbox)
            .map(str::to_owned)
            .or_else(|| may_read(&path, who));
        if let Some(why) = why {
            out.push(Problem {
                at: source.display().to_string(),
                key,
                message: format!(
                    "{}: not readable by the service's user {}: {why}; the service would refuse \
                     to start (check runs as root, which reads everything)",
                    path.display(),
                    who.name
                ),
            });
        }
    }
    out
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

/// Whether this process runs as root (the owner of its own `/proc/self` is its effective uid).
pub fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(uid: u32, groups: &[u32]) -> Account {
        Account {
            name: "tamis".into(),
            uid,
            groups: groups.to_vec(),
        }
    }

    #[test]
    fn the_owner_bits_then_the_group_then_the_others() {
        let tamis = user(998, &[998, 44]);
        // root:tamis 0640, as the package installs the config: the group may read.
        assert!(may(0o640, 0, 998, &tamis, 4));
        // root:root 0600 (a salt made with `head -c 32 /dev/urandom > f` by root, umask 077).
        assert!(!may(0o600, 0, 0, &tamis, 4));
        assert!(may(0o644, 0, 0, &tamis, 4));
        // A supplementary group counts.
        assert!(may(0o640, 0, 44, &tamis, 4));
        // Owned by the user but without the owner's bit: refused, whatever the others' say.
        assert!(!may(0o044, 998, 0, &tamis, 4));
        // Folders: the search bit.
        assert!(may(0o711, 0, 0, &tamis, 1));
        assert!(!may(0o700, 0, 0, &tamis, 1));
        assert!(may(0o000, 5, 5, &user(0, &[0]), 4));
    }

    #[test]
    fn an_account_is_read_from_passwd_and_group() {
        let passwd =
            "root:x:0:0:root:/root:/bin/bash\ntamis:x:998:997::/nonexistent:/usr/sbin/nologin\n";
        let group = "root:x:0:\ntamis:x:997:\nssl-cert:x:110:postgres,tamis\nadm:x:4:syslog\n";
        assert_eq!(
            Account::find("tamis", passwd, group),
            Some(Account {
                name: "tamis".into(),
                uid: 998,
                groups: vec![997, 110]
            })
        );
        assert_eq!(Account::find("nobody", passwd, group), None);
        assert_eq!(Account::find("tamis", "tamis:x:nope:1::\n", group), None);
    }

    #[test]
    fn the_units_sandbox_hides_tmp_and_homes() {
        assert!(hidden_by_sandbox(Path::new("/tmp/salt")).is_some());
        assert!(hidden_by_sandbox(Path::new("/root/tamis/salt")).is_some());
        assert!(hidden_by_sandbox(Path::new("/home/ops/key.pem")).is_some());
        assert!(hidden_by_sandbox(Path::new("/etc/tamis/salt")).is_none());
        assert!(hidden_by_sandbox(Path::new("/tmpfiles/x")).is_none());
    }
}
