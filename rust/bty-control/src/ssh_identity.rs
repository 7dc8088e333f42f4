//! The server's SSH identity for online CIJOE runs: one ed25519 key made on
//! first start (`<state>/cijoe/ssh/id_ed25519`, mode 0600), whose public
//! half images authorise. It is used only for machines opted into
//! `cijoe-online`, and only by cijoe runs bty-web starts (each audited).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey};

#[derive(Debug, Clone)]
pub struct SshIdentity {
    /// The private key file handed to cijoe's transport (`key_filename`).
    pub key_file: PathBuf,
    /// `ssh-ed25519 AAAA… bty-web@<host>`, for `authorized_keys`.
    pub public: String,
    /// `SHA256:…`
    pub fingerprint: String,
}

/// Load the key, or make it on first start. A key file another process
/// could read is refused rather than used.
pub fn load_or_create(state_dir: &Path) -> anyhow::Result<SshIdentity> {
    let dir = state_dir.join("cijoe").join("ssh");
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    let key_file = dir.join("id_ed25519");
    let key = if key_file.exists() {
        let mode = std::fs::metadata(&key_file)?.permissions().mode();
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "{} is readable by others (mode {:o}); `chmod 600` it or remove it to have a new one made",
                key_file.display(),
                mode & 0o777
            );
        }
        PrivateKey::read_openssh_file(&key_file)
            .map_err(|e| anyhow::anyhow!("{} is not an OpenSSH private key: {e}", key_file.display()))?
    } else {
        let mut key = PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519)
            .map_err(|e| anyhow::anyhow!("cannot make an SSH key: {e}"))?;
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        key.set_comment(format!("bty-web@{}", host.trim()));
        let text =
            key.to_openssh(LineEnding::LF).map_err(|e| anyhow::anyhow!("cannot encode the key: {e}"))?;
        let tmp = dir.join(format!(".id_ed25519.{}", std::process::id()));
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &key_file)?;
        key
    };
    let public =
        key.public_key().to_openssh().map_err(|e| anyhow::anyhow!("cannot encode the public key: {e}"))?;
    std::fs::write(dir.join("id_ed25519.pub"), format!("{public}\n"))?;
    Ok(SshIdentity { key_file, fingerprint: key.fingerprint(HashAlg::Sha256).to_string(), public })
}

/// `SHA256:…` of an OpenSSH public key line (`type base64 [comment]`).
pub fn fingerprint(line: &str) -> Option<String> {
    PublicKey::from_openssh(line.trim()).ok().map(|k| k.fingerprint(HashAlg::Sha256).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_kept_private_and_reloaded() {
        let d = tempfile::tempdir().unwrap();
        let a = load_or_create(d.path()).unwrap();
        assert!(a.public.starts_with("ssh-ed25519 "), "{}", a.public);
        assert!(a.fingerprint.starts_with("SHA256:"));
        let mode = std::fs::metadata(&a.key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = load_or_create(d.path()).unwrap();
        assert_eq!((a.public.clone(), a.fingerprint.clone()), (b.public, b.fingerprint));
        assert_eq!(fingerprint(&a.public).as_deref(), Some(a.fingerprint.as_str()));
        std::fs::set_permissions(&a.key_file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(d.path()).unwrap_err().to_string();
        assert!(e.contains("readable by others"), "{e}");
    }
}
