//! Certificates for a cluster with TLS: a fresh CA, one certificate per replica and one
//! for clients, made with rcgen and written as PEM files, and the config's `[tls]`
//! section pointing at them. What `dura-kv`/`dura-ts` `init --tls-dir` and `local --tls`,
//! `dura-bench run --tls` and the tests use.
//!
//! A replica's certificate names `dura-replica-<id>` (what its peers and clients check,
//! see [`super::tls`]) and its host (an IP address or a DNS name), so other
//! tools can check it against the address too. Keys are ECDSA P-256, written with
//! mode 0600.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

use super::config::TlsConfig;
use super::tls::replica_name;
use super::{ClusterConfig, RuntimeError};

/// The CA's certificate file in the TLS folder.
pub const CA_FILE: &str = "ca.pem";
/// The CA's private key, kept to issue more certificates later.
pub const CA_KEY_FILE: &str = "ca-key.pem";

fn generation_failed(what: &str, error: rcgen::Error) -> RuntimeError {
    RuntimeError::Config { field: "tls".into(), reason: format!("cannot generate {what}: {error}") }
}

fn write_file(path: &Path, text: &str, mode: u32) -> Result<(), RuntimeError> {
    let io = |error| RuntimeError::Io { operation: "write", path: path.to_path_buf(), error };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(io)
}

/// A CA able to sign certificates, with its files in a folder.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn issue(
        &self,
        dir: &Path,
        stem: &str,
        common_name: &str,
        names: Vec<String>,
    ) -> Result<(PathBuf, PathBuf), RuntimeError> {
        let key = KeyPair::generate().map_err(|e| generation_failed("a key", e))?;
        let mut params =
            CertificateParams::new(names).map_err(|e| generation_failed("a certificate", e))?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| generation_failed("a certificate", e))?;
        let cert_file = dir.join(format!("{stem}.pem"));
        let key_file = dir.join(format!("{stem}-key.pem"));
        write_file(&cert_file, &cert.pem(), 0o644)?;
        write_file(&key_file, &key.serialize_pem(), 0o600)?;
        Ok((cert_file, key_file))
    }
}

/// Writes a fresh CA (`ca.pem`, `ca-key.pem`), a certificate and key per replica
/// (`replica-<id>.pem`, `replica-<id>-key.pem`) and a client certificate
/// (`client.pem`, `client-key.pem`) into `dir` (created if missing), and turns TLS on
/// in `config` with those files, by absolute path. Files already there are replaced.
pub fn generate_tls(config: &mut ClusterConfig, dir: &Path) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(dir).map_err(|error| RuntimeError::Io {
        operation: "create the TLS folder",
        path: dir.to_path_buf(),
        error,
    })?;
    let dir = dir.canonicalize().map_err(|error| RuntimeError::Io {
        operation: "resolve the TLS folder",
        path: dir.to_path_buf(),
        error,
    })?;
    let ca_key = KeyPair::generate().map_err(|e| generation_failed("the CA key", e))?;
    let mut params = CertificateParams::new(Vec::<String>::new())
        .map_err(|e| generation_failed("the CA certificate", e))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, "dura cluster CA");
    let ca_cert =
        params.self_signed(&ca_key).map_err(|e| generation_failed("the CA certificate", e))?;
    write_file(&dir.join(CA_FILE), &ca_cert.pem(), 0o644)?;
    write_file(&dir.join(CA_KEY_FILE), &ca_key.serialize_pem(), 0o600)?;
    let ca = Ca { cert: ca_cert, key: ca_key };
    for replica in &mut config.replicas {
        let name = replica_name(replica.id);
        let mut names = vec![name.clone()];
        if replica.host != name {
            names.push(replica.host.clone());
        }
        let (cert, key) = ca.issue(&dir, &format!("replica-{}", replica.id), &name, names)?;
        replica.tls_cert_file = Some(cert);
        replica.tls_key_file = Some(key);
    }
    let (client_cert, client_key) =
        ca.issue(&dir, "client", "dura client", vec!["dura-client".into()])?;
    config.tls = Some(TlsConfig {
        ca_file: dir.join(CA_FILE),
        client_cert_file: Some(client_cert),
        client_key_file: Some(client_key),
        client_cert_auth: false,
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{LogMode, Mode};

    #[test]
    fn generated_files_load_as_every_replica_and_as_a_client() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config =
            ClusterConfig::local(4, Mode::Bft, LogMode::None, dir.path()).expect("config");
        generate_tls(&mut config, &dir.path().join("tls")).expect("generate");
        config.validate().expect("valid");
        for id in 0..4 {
            let tls = crate::runtime::tls::ReplicaTls::load(&config, id).expect("loads");
            assert!(tls.is_some());
        }
        assert!(crate::runtime::tls::load_client(&config).expect("loads").is_some());
        let mode = |file: &str| {
            use std::os::unix::fs::PermissionsExt as _;
            let path = dir.path().join("tls").join(file);
            std::fs::metadata(path).expect("exists").permissions().mode() & 0o777
        };
        assert_eq!(mode("replica-0-key.pem"), 0o600);
        assert_eq!(mode(CA_KEY_FILE), 0o600);
        assert_eq!(mode(CA_FILE), 0o644);
    }
}
