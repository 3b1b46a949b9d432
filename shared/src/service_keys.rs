//! One signing key per hop: the Ed25519 keys of service tokens.
//!
//! A layer calling the next one sends a short-lived service token signed
//! (EdDSA) with *its own* private key; the layer called accepts service
//! tokens only from the layers allowed to call it ([`callers_of`]), each
//! verified with that caller's public key. So experience-api, which faces
//! the internet, holds no key that system-api accepts: it cannot mint
//! `erp:write` or pick an `on_behalf_of` for the systems of record.
//!
//! Keys live in a directory (`[auth.service_keys] dir`):
//! `<service>.key.pem` (PKCS#8 private key; only the service itself needs
//! it) and `<service>.pub.pem` (SPKI public key; the layers it calls need
//! it). With `create_missing` (the development default) a missing pair is
//! created on start, safely when several processes start at once;
//! deployments provision them (`retail-platform keys --dir DIR`) and turn
//! creation off, so a missing key refuses start instead of failing calls.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use jsonwebtoken::{DecodingKey, EncodingKey};

use crate::auth::audience;
use crate::config::ServiceKeySettings;

/// The layers whose service tokens `audience` accepts: the architecture's
/// calls (experience → process, process → system, system → process when it
/// hands over store events), nothing else.
pub fn callers_of(audience: &str) -> &'static [&'static str] {
    match audience {
        audience::PROCESS => &[audience::EXPERIENCE, audience::SYSTEM],
        audience::SYSTEM => &[audience::PROCESS],
        _ => &[],
    }
}

/// The `kid` a service token of `service` names.
pub fn key_id(service: &str) -> String {
    format!("svc:{service}")
}

/// A service's own signing key and the public keys of its callers.
#[derive(Clone, Default)]
pub struct ServiceKeys {
    /// This service's name and private key, when it calls another layer.
    pub signing: Option<(String, EncodingKey)>,
    /// Callers' public keys by service name.
    pub verifying: HashMap<String, DecodingKey>,
}

impl std::fmt::Debug for ServiceKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceKeys")
            .field("signing", &self.signing.as_ref().map(|(name, _)| name))
            .field("verifying", &self.verifying.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ServiceKeys {
    /// The keys `service` needs: its own private key and its callers'
    /// public keys, read from the configured directory (created first when
    /// missing and `create_missing` is on).
    pub fn load(settings: &ServiceKeySettings, service: &str) -> anyhow::Result<Self> {
        let dir = Path::new(&settings.dir);
        let mut keys = Self::default();
        let private = read_or_create(dir, service, settings.create_missing)?;
        keys.signing = Some((
            service.to_owned(),
            EncodingKey::from_ed_pem(private.as_bytes()).with_context(|| {
                format!(
                    "{}: not an Ed25519 PKCS#8 key",
                    key_path(dir, service).display()
                )
            })?,
        ));
        for caller in callers_of(service) {
            let public = read_public(dir, caller, settings.create_missing)?;
            let key = DecodingKey::from_ed_pem(public.as_bytes()).with_context(|| {
                format!(
                    "{}: not an Ed25519 public key",
                    public_path(dir, caller).display()
                )
            })?;
            keys.verifying.insert((*caller).to_owned(), key);
        }
        Ok(keys)
    }
}

/// `service`'s keys for building its router: as [`ServiceKeys::load`],
/// but a failure (already refused by `Application::build`, which loads them
/// first) leaves the router accepting no service token instead of panicking.
pub fn for_router(settings: &ServiceKeySettings, service: &str) -> ServiceKeys {
    ServiceKeys::load(settings, service).unwrap_or_else(|error| {
        tracing::error!(%service, error = %format!("{error:#}"), "service keys unavailable");
        ServiceKeys::default()
    })
}

/// Fresh key pairs for all three layers, kept in memory: what a test that
/// builds several services in one process hands each of them.
#[derive(Clone)]
pub struct KeySet(HashMap<&'static str, (String, String)>);

impl KeySet {
    /// Three new pairs.
    pub fn generate() -> Self {
        Self(
            audience::ALL
                .iter()
                .map(|service| (*service, generate()))
                .collect(),
        )
    }

    /// `service`'s keys out of this set: its private key, its callers'
    /// public keys.
    pub fn keys(&self, service: &str) -> ServiceKeys {
        let mut keys = ServiceKeys::default();
        if let Some((private, _)) = self.0.get(service) {
            keys.signing = EncodingKey::from_ed_pem(private.as_bytes())
                .ok()
                .map(|key| (service.to_owned(), key));
        }
        for caller in callers_of(service) {
            if let Some(key) = self
                .0
                .get(caller)
                .and_then(|(_, public)| DecodingKey::from_ed_pem(public.as_bytes()).ok())
            {
                keys.verifying.insert((*caller).to_owned(), key);
            }
        }
        keys
    }
}

/// Writes a fresh key pair for each of the three layers into `dir`
/// (refusing to overwrite one), for `retail-platform keys`.
pub fn create_all(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for service in audience::ALL {
        if key_path(dir, service).exists() {
            anyhow::bail!(
                "{} exists; not overwritten",
                key_path(dir, service).display()
            );
        }
        read_or_create(dir, service, true)?;
        written.push(key_path(dir, service));
        written.push(public_path(dir, service));
    }
    Ok(written)
}

fn key_path(dir: &Path, service: &str) -> PathBuf {
    dir.join(format!("{service}.key.pem"))
}

fn public_path(dir: &Path, service: &str) -> PathBuf {
    dir.join(format!("{service}.pub.pem"))
}

/// A new pair as (PKCS#8 private PEM, SPKI public PEM).
fn generate() -> (String, String) {
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let key = SigningKey::from_bytes(&seed);
    let private = key
        .to_pkcs8_pem(LineEnding::LF)
        .map(|pem| pem.to_string())
        .unwrap_or_default();
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap_or_default();
    (private, public)
}

/// `service`'s private key PEM; created (with its public key) when missing
/// and allowed. Two processes creating it at once agree on one: each
/// writes a temporary file and links it into place, which fails for the
/// second, who then reads the first's.
fn read_or_create(dir: &Path, service: &str, create: bool) -> anyhow::Result<String> {
    let path = key_path(dir, service);
    if let Ok(pem) = std::fs::read_to_string(&path) {
        ensure_public(dir, service, &pem)?;
        return Ok(pem);
    }
    if !create {
        anyhow::bail!(
            "the service key {} is missing (create keys with `retail-platform keys --dir {}`, \
             or set auth.service_keys.create_missing = true on a single machine)",
            path.display(),
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (private, _) = generate();
    let temporary = dir.join(format!(".{service}.{}.tmp", uuid::Uuid::new_v4()));
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options
            .open(&temporary)
            .with_context(|| format!("cannot write {}", temporary.display()))?;
        file.write_all(private.as_bytes())?;
        file.sync_all()?;
    }
    let linked = std::fs::hard_link(&temporary, &path);
    let _ = std::fs::remove_file(&temporary);
    if let Err(error) = linked
        && error.kind() != std::io::ErrorKind::AlreadyExists
    {
        return Err(error).with_context(|| format!("cannot write {}", path.display()));
    }
    let pem = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    ensure_public(dir, service, &pem)?;
    Ok(pem)
}

/// Writes `<service>.pub.pem` from the private key when it is missing.
fn ensure_public(dir: &Path, service: &str, private: &str) -> anyhow::Result<()> {
    let path = public_path(dir, service);
    if path.exists() {
        return Ok(());
    }
    let key = <SigningKey as ed25519_dalek::pkcs8::DecodePrivateKey>::from_pkcs8_pem(private)
        .map_err(|error| anyhow::anyhow!("{}: {error}", key_path(dir, service).display()))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|error| anyhow::anyhow!("{error}"))?;
    // Written whole under another name, then renamed: a reader never sees
    // half a key, and two writers write the same bytes.
    let temporary = dir.join(format!(".{service}.pub.{}.tmp", uuid::Uuid::new_v4()));
    std::fs::write(&temporary, public)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, &path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `service`'s public key PEM: its `.pub.pem`, else derived from its
/// private key when this machine has it, else (when allowed) a new pair.
fn read_public(dir: &Path, service: &str, create: bool) -> anyhow::Result<String> {
    if let Ok(pem) = std::fs::read_to_string(public_path(dir, service)) {
        return Ok(pem);
    }
    if key_path(dir, service).exists() || create {
        read_or_create(dir, service, create)?;
        return std::fs::read_to_string(public_path(dir, service))
            .with_context(|| format!("cannot read {}", public_path(dir, service).display()));
    }
    anyhow::bail!(
        "the public key {} of {service}, which may call this service, is missing",
        public_path(dir, service).display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &Path, create_missing: bool) -> ServiceKeySettings {
        ServiceKeySettings {
            dir: dir.to_string_lossy().into_owned(),
            create_missing,
        }
    }

    #[test]
    fn keys_are_created_once_and_shared_through_the_directory() {
        let dir = tempfile::tempdir().expect("dir");
        let process =
            ServiceKeys::load(&settings(dir.path(), true), audience::PROCESS).expect("created");
        assert_eq!(process.verifying.len(), 2);
        let first = std::fs::read_to_string(key_path(dir.path(), audience::EXPERIENCE))
            .expect("experience key created for process-api's sake");
        ServiceKeys::load(&settings(dir.path(), true), audience::EXPERIENCE).expect("loaded");
        let again = std::fs::read_to_string(key_path(dir.path(), audience::EXPERIENCE))
            .expect("still there");
        assert_eq!(first, again, "an existing key is never replaced");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key_path(dir.path(), audience::EXPERIENCE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o077,
                0,
                "a private key is readable by its owner only"
            );
        }
    }

    #[test]
    fn a_missing_key_refuses_start_when_creation_is_off() {
        let dir = tempfile::tempdir().expect("dir");
        let error = ServiceKeys::load(&settings(dir.path(), false), audience::SYSTEM)
            .expect_err("nothing provisioned");
        assert!(error.to_string().contains("system-api.key.pem"), "{error}");
        create_all(dir.path()).expect("provisioned");
        ServiceKeys::load(&settings(dir.path(), false), audience::SYSTEM).expect("provisioned");
        assert!(create_all(dir.path()).is_err(), "never overwrites");
    }

    #[test]
    fn a_deployment_needs_only_its_callers_public_keys() {
        let dir = tempfile::tempdir().expect("dir");
        create_all(dir.path()).expect("provisioned");
        // system-api's host holds its own private key and process-api's
        // public key only.
        std::fs::remove_file(key_path(dir.path(), audience::PROCESS)).expect("rm");
        std::fs::remove_file(key_path(dir.path(), audience::EXPERIENCE)).expect("rm");
        let keys = ServiceKeys::load(&settings(dir.path(), false), audience::SYSTEM)
            .expect("enough to run");
        assert_eq!(
            keys.verifying.keys().collect::<Vec<_>>(),
            vec![audience::PROCESS]
        );
    }

    #[test]
    fn concurrent_creation_agrees_on_one_key() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().to_owned();
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || read_or_create(&path, audience::PROCESS, true))
            })
            .collect();
        let pems: Vec<String> = handles
            .into_iter()
            .map(|h| h.join().expect("thread").expect("key"))
            .collect();
        assert!(pems.windows(2).all(|w| w[0] == w[1]));
    }
}
