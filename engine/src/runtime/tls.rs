//! TLS (rustls 1.3, the `ring` provider) for replica links, client connections and the
//! data path, when the cluster config has a `[tls]` section ([`super::config::TlsConfig`]).
//!
//! # What is checked
//!
//! Every certificate must chain to the config's CA. A replica's certificate must name
//! `dura-replica-<id>` ([`replica_name`]) among its DNS subjectAltNames: a dialer (a
//! replica, a client, a leecher) checks that name for the replica it meant to reach,
//! and an acceptor checks it for the replica id the connection's hello (or a data-path
//! request) claims. So a link is from the replica it says it is, to the replica it was
//! meant for; the HMACs stay, since a BFT protocol needs authenticators that the other
//! replicas can check, which a TLS session (between two endpoints) does not give.
//!
//! # One connection, two threads
//!
//! A rustls connection is one state machine for both directions, and the network gives
//! each connection a reader and a writer thread. [`split`] shares the connection
//! between them behind a mutex that is never held across a socket call: the reader
//! reads ciphertext from its own clone of the socket *outside* the lock, then takes the
//! lock to decrypt; the writer takes the lock to encrypt into a buffer, then writes
//! that buffer to the socket. Ciphertext must reach the socket in the order rustls
//! produced it, so every socket write happens under a second mutex, `out`, taken
//! before the connection's (always in that order). The reader sometimes has bytes to
//! send (a key update's answer): it only tries `out`, and when the writer holds it the
//! writer sends them as it lets go (`Shared::flush_deferred`), so a reader never
//! waits for a writer.

use std::borrow::BorrowMut;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, TryLockError};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, Connection, RootCertStore, ServerConfig};

use super::RuntimeError;
use super::config::{ClusterConfig, TlsConfig};

/// Plaintext bytes encrypted per turn of the writer: one turn holds the connection's
/// lock, so the reader waits for at most this much encryption.
pub const WRITE_CHUNK_BYTES: usize = 64 * 1024;

/// Ciphertext bytes read from the socket per turn of the reader (a TLS record is at
/// most about 16.6 KiB).
pub const READ_CHUNK_BYTES: usize = 64 * 1024;

/// The first byte of a TLS handshake record; a plaintext peer's first byte is the low
/// byte of its hello's length.
pub const TLS_HANDSHAKE_RECORD: u8 = 22;

/// The DNS name a replica's certificate must carry: `dura-replica-<id>`.
pub fn replica_name(id: u32) -> String {
    format!("dura-replica-{id}")
}

fn server_name(id: u32) -> ServerName<'static> {
    ServerName::try_from(replica_name(id)).expect("dura-replica-<id> is a valid DNS name")
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn wrong(field: impl Into<String>, path: &Path, reason: impl std::fmt::Display) -> RuntimeError {
    RuntimeError::Config { field: field.into(), reason: format!("{}: {reason}", path.display()) }
}

/// The certificates of a PEM file; an error naming `field` when it cannot be read or
/// holds none.
pub fn load_certs(path: &Path, field: &str) -> Result<Vec<CertificateDer<'static>>, RuntimeError> {
    let bytes =
        std::fs::read(path).map_err(|error| wrong(field, path, format!("cannot read: {error}")))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| wrong(field, path, format!("not PEM certificates: {error}")))?;
    if certs.is_empty() {
        return Err(wrong(field, path, "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certs)
}

/// The private key of a PEM file; an error naming `field` when it cannot be read or
/// holds none.
pub fn load_key(path: &Path, field: &str) -> Result<PrivateKeyDer<'static>, RuntimeError> {
    let bytes =
        std::fs::read(path).map_err(|error| wrong(field, path, format!("cannot read: {error}")))?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|error| wrong(field, path, format!("no PEM private key: {error}")))
}

fn load_roots(tls: &TlsConfig) -> Result<Arc<RootCertStore>, RuntimeError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(&tls.ca_file, "tls.ca_file")? {
        roots.add(cert).map_err(|error| {
            wrong("tls.ca_file", &tls.ca_file, format!("not a CA certificate: {error}"))
        })?;
    }
    Ok(Arc::new(roots))
}

/// The TLS side of one replica: what it presents and checks on each of its ports.
#[derive(Debug, Clone)]
pub struct ReplicaTls {
    /// Accepting replica links and data-path connections: a client certificate is
    /// required (mutual TLS).
    pub peers: Arc<ServerConfig>,
    /// Accepting clients: a client certificate is checked when presented, and required
    /// with `client_cert_auth`.
    pub clients: Arc<ServerConfig>,
    /// Dialing peers (links, data path), presenting this replica's certificate.
    pub dial: Arc<ClientConfig>,
}

impl ReplicaTls {
    /// Loads replica `id`'s certificate, key and the CA; `Ok(None)` when TLS is off. An
    /// error names the field and file that is missing, unreadable or invalid.
    pub fn load(config: &ClusterConfig, id: u32) -> Result<Option<Self>, RuntimeError> {
        let Some(tls) = &config.tls else { return Ok(None) };
        let replica = config.replica(id)?;
        let cert_field = format!("replica[{id}].tls_cert_file");
        let key_field = format!("replica[{id}].tls_key_file");
        let not_set = |field: &str| RuntimeError::Config {
            field: field.into(),
            reason: "not set: [tls] is on, so every replica needs its certificate and key".into(),
        };
        let cert_path = replica.tls_cert_file.as_deref().ok_or_else(|| not_set(&cert_field))?;
        let key_path = replica.tls_key_file.as_deref().ok_or_else(|| not_set(&key_field))?;
        let chain = load_certs(cert_path, &cert_field)?;
        let key = load_key(key_path, &key_field)?;
        let roots = load_roots(tls)?;
        // The certificate must be the replica's own: checked here so that a mix-up of
        // files is an error at start, not a refused link later.
        check_names_replica(&chain[0], id)
            .map_err(|reason| wrong(&cert_field, cert_path, reason))?;
        let verifier = |optional: bool| {
            let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
            let builder = if optional { builder.allow_unauthenticated() } else { builder };
            builder.build().map_err(|error| {
                wrong("tls.ca_file", &tls.ca_file, format!("cannot check certificates: {error}"))
            })
        };
        let key_mismatch = |error: rustls::Error| {
            wrong(&key_field, key_path, format!("does not go with {cert_field}: {error}"))
        };
        let server = |verifier| -> Result<Arc<ServerConfig>, RuntimeError> {
            let mut server = ServerConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .expect("the ring provider supports TLS 1.3")
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(key_mismatch)?;
            // Connections are long-lived: no session tickets, no resumption.
            server.send_tls13_tickets = 0;
            Ok(Arc::new(server))
        };
        let peers = server(verifier(false)?)?;
        let clients = server(verifier(!tls.client_cert_auth)?)?;
        let mut dial = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("the ring provider supports TLS 1.3")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(key_mismatch)?;
        dial.resumption = rustls::client::Resumption::disabled();
        Ok(Some(Self { peers, clients, dial: Arc::new(dial) }))
    }
}

/// A client's TLS settings from `config`; `Ok(None)` when TLS is off.
pub fn load_client(config: &ClusterConfig) -> Result<Option<Arc<ClientConfig>>, RuntimeError> {
    let Some(tls) = &config.tls else { return Ok(None) };
    let roots = load_roots(tls)?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("the ring provider supports TLS 1.3")
        .with_root_certificates(roots);
    let mut client = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let chain = load_certs(cert_path, "tls.client_cert_file")?;
            let key = load_key(key_path, "tls.client_key_file")?;
            builder.with_client_auth_cert(chain, key).map_err(|error| {
                wrong(
                    "tls.client_key_file",
                    key_path,
                    format!("does not go with tls.client_cert_file: {error}"),
                )
            })?
        }
        (None, None) if tls.client_cert_auth => {
            return Err(RuntimeError::Config {
                field: "tls.client_cert_file".into(),
                reason: "not set, and client_cert_auth = true: replicas accept only clients \
                         with a certificate"
                    .into(),
            });
        }
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(RuntimeError::Config {
                field: "tls.client_key_file".into(),
                reason: "client_cert_file and client_key_file go together".into(),
            });
        }
    };
    client.resumption = rustls::client::Resumption::disabled();
    Ok(Some(Arc::new(client)))
}

/// Whether `cert` names replica `id` (see [`replica_name`]); the reason when not.
pub fn check_names_replica(cert: &CertificateDer<'_>, id: u32) -> Result<(), String> {
    let parsed = webpki::EndEntityCert::try_from(cert)
        .map_err(|error| format!("not a parsable certificate: {error:?}"))?;
    parsed.verify_is_valid_for_subject_name(&server_name(id)).map_err(|error| {
        format!("does not name {} (its DNS subjectAltNames): {error:?}", replica_name(id))
    })
}

/// Whether the peer of a finished handshake presented a certificate naming replica
/// `id`; its chain to the CA was checked by the handshake itself.
pub fn check_peer_is_replica(connection: &rustls::CommonState, id: u32) -> Result<(), String> {
    let Some(cert) = connection.peer_certificates().and_then(|chain| chain.first()) else {
        return Err(format!("presented no certificate, but claims to be replica {id}"));
    };
    check_names_replica(cert, id)
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// Runs a server handshake on `stream` within `timeout` (blocking; the stream's
/// timeouts are left set, the caller clears them).
pub fn accept(
    stream: &mut TcpStream,
    config: Arc<ServerConfig>,
    timeout: Duration,
) -> io::Result<Connection> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut connection = rustls::ServerConnection::new(config).map_err(tls_error)?;
    while connection.is_handshaking() {
        connection.complete_io(stream)?;
    }
    Ok(Connection::Server(connection))
}

/// Runs a client handshake with replica `id` on `stream` within `timeout` (its
/// certificate must name `dura-replica-<id>`).
pub fn connect(
    stream: &mut TcpStream,
    config: Arc<ClientConfig>,
    id: u32,
    timeout: Duration,
) -> io::Result<Connection> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut connection = ClientConnection::new(config, server_name(id)).map_err(tls_error)?;
    while connection.is_handshaking() {
        connection.complete_io(stream)?;
    }
    Ok(Connection::Client(connection))
}

/// A TLS connection and its socket as one `Read + Write`, for one thread (a hello, the
/// data path). A socket timeout surfaces as the socket's error and leaves the
/// connection usable: a later call goes on where it stopped.
#[derive(Debug)]
pub struct Blocking<C, S> {
    /// The TLS connection, its handshake done.
    pub connection: C,
    /// Its socket.
    pub socket: S,
}

impl<C: BorrowMut<Connection>, S: Read + Write> Blocking<C, S> {
    /// Pairs `connection` with `socket`.
    pub fn new(connection: C, socket: S) -> Self {
        Self { connection, socket }
    }

    fn send_pending(&mut self) -> io::Result<()> {
        let connection = self.connection.borrow_mut();
        while connection.wants_write() {
            connection.write_tls(&mut self.socket)?;
        }
        Ok(())
    }
}

impl<C: BorrowMut<Connection>, S: Read + Write> Read for Blocking<C, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.connection.borrow_mut().reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                Err(error) => return Err(error),
            }
            let connection = self.connection.borrow_mut();
            let n = connection.read_tls(&mut self.socket)?;
            connection.process_new_packets().map_err(tls_error)?;
            if n == 0 {
                // The socket ended: a clean close reads 0, anything else is an error.
                return match connection.reader().read(buf) {
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    other => other,
                };
            }
            self.send_pending()?;
        }
    }
}

impl<C: BorrowMut<Connection>, S: Read + Write> Write for Blocking<C, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let take = buf.len().min(WRITE_CHUNK_BYTES);
        self.connection.borrow_mut().writer().write_all(&buf[..take])?;
        self.send_pending()?;
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send_pending()?;
        self.socket.flush()
    }
}

/// What the reader and writer halves of a split connection share.
#[derive(Debug)]
struct Shared {
    connection: Mutex<Connection>,
    /// The socket's writing side; held for every socket write, and taken before
    /// `connection` when both are held.
    out: Mutex<TcpStream>,
    /// The reader left ciphertext in the connection for the socket.
    flush_pending: AtomicBool,
}

impl Shared {
    fn connection(&self) -> io::Result<std::sync::MutexGuard<'_, Connection>> {
        self.connection.lock().map_err(|_| io::Error::other("TLS connection lock poisoned"))
    }

    /// Sends what the reader left in the connection, unless `out` is held: its holder
    /// calls this again after letting go, so nothing is left behind.
    fn flush_deferred(&self) -> io::Result<()> {
        while self.flush_pending.load(Ordering::SeqCst) {
            let mut out = match self.out.try_lock() {
                Ok(out) => out,
                Err(TryLockError::WouldBlock) => return Ok(()),
                Err(TryLockError::Poisoned(_)) => {
                    return Err(io::Error::other("TLS socket lock poisoned"));
                }
            };
            self.flush_pending.store(false, Ordering::SeqCst);
            let mut bytes = Vec::new();
            {
                let mut connection = self.connection()?;
                while connection.wants_write() {
                    connection.write_tls(&mut bytes)?;
                }
            }
            out.write_all(&bytes)?;
        }
        Ok(())
    }
}

/// The reading half of a split TLS connection.
#[derive(Debug)]
pub struct Reader {
    shared: Arc<Shared>,
    socket: TcpStream,
    ciphertext: Box<[u8]>,
    start: usize,
    end: usize,
    eof: bool,
}

impl Read for Reader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let mut flush = false;
            {
                let mut connection = self.shared.connection()?;
                loop {
                    match connection.reader().read(buf) {
                        // 0: the peer closed cleanly (close_notify).
                        Ok(n) => return Ok(n),
                        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                        Err(error) => return Err(error),
                    }
                    if self.start == self.end {
                        if self.eof {
                            return Ok(0);
                        }
                        break;
                    }
                    // The plaintext buffer is empty here, so rustls takes the bytes.
                    let mut pending = &self.ciphertext[self.start..self.end];
                    let taken = connection.read_tls(&mut pending)?;
                    self.start += taken;
                    connection.process_new_packets().map_err(tls_error)?;
                    if connection.wants_write() {
                        self.shared.flush_pending.store(true, Ordering::SeqCst);
                        flush = true;
                    }
                }
            }
            if flush {
                self.shared.flush_deferred()?;
            }
            // The socket is read with no lock held: the writer goes on meanwhile.
            let n = self.socket.read(&mut self.ciphertext)?;
            self.start = 0;
            self.end = n;
            if n == 0 {
                self.eof = true;
                // Tells rustls the stream ended: a read then reports a clean close or
                // an unexpected end.
                let mut connection = self.shared.connection()?;
                connection.read_tls(&mut &[][..])?;
                match connection.reader().read(buf) {
                    Ok(n) => return Ok(n),
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                    Err(error) => return Err(error),
                }
            }
        }
    }
}

/// The writing half of a split TLS connection; each `write` encrypts at most
/// [`WRITE_CHUNK_BYTES`] and sends the records before it returns.
#[derive(Debug)]
pub struct Writer {
    shared: Arc<Shared>,
    ciphertext: Vec<u8>,
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let take = buf.len().min(WRITE_CHUNK_BYTES);
        {
            let mut out =
                self.shared.out.lock().map_err(|_| io::Error::other("TLS socket lock poisoned"))?;
            self.ciphertext.clear();
            {
                let mut connection = self.shared.connection()?;
                connection.writer().write_all(&buf[..take])?;
                while connection.wants_write() {
                    connection.write_tls(&mut self.ciphertext)?;
                }
            }
            out.write_all(&self.ciphertext)?;
        }
        self.shared.flush_deferred()?;
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        // Every write sent its records already.
        Ok(())
    }
}

/// Splits a connection whose handshake is done into a reader and a writer for two
/// threads (see the module's doc). `socket` must be the connection's socket, blocking
/// and with no timeouts.
pub fn split(mut connection: Connection, socket: &TcpStream) -> io::Result<(Reader, Writer)> {
    assert!(!connection.is_handshaking(), "split after the handshake");
    // Each write is sent before the next one, so what rustls buffers is bounded by
    // WRITE_CHUNK_BYTES already.
    connection.set_buffer_limit(None);
    let shared = Arc::new(Shared {
        connection: Mutex::new(connection),
        out: Mutex::new(socket.try_clone()?),
        flush_pending: AtomicBool::new(false),
    });
    let reader = Reader {
        shared: shared.clone(),
        socket: socket.try_clone()?,
        ciphertext: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
        start: 0,
        end: 0,
        eof: false,
    };
    // Anything left from the handshake goes out first.
    shared.flush_pending.store(true, Ordering::SeqCst);
    shared.flush_deferred()?;
    Ok((reader, Writer { shared, ciphertext: Vec::with_capacity(WRITE_CHUNK_BYTES + 1024) }))
}

/// Test certificates, made with rcgen: a CA and replica certificates signed by it.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};

    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

    use super::super::config::{ClusterConfig, TlsConfig};
    use super::replica_name;

    /// A CA that signs certificates into a directory.
    pub(crate) struct TestCa {
        cert: rcgen::Certificate,
        key: KeyPair,
        /// Where its certificate (PEM) is.
        pub(crate) ca_file: PathBuf,
        dir: PathBuf,
    }

    impl TestCa {
        pub(crate) fn new(dir: &Path, name: &str) -> TestCa {
            let key = KeyPair::generate().expect("CA key");
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).expect("CA certificate");
            let ca_file = dir.join(format!("{name}.pem"));
            std::fs::write(&ca_file, cert.pem()).expect("write CA");
            TestCa { cert, key, ca_file, dir: dir.to_path_buf() }
        }

        /// A certificate for `names` signed by this CA: (cert file, key file).
        pub(crate) fn issue(&self, file: &str, names: &[String]) -> (PathBuf, PathBuf) {
            let key = KeyPair::generate().expect("key");
            let params = CertificateParams::new(names.to_vec()).expect("params");
            let cert = params.signed_by(&key, &self.cert, &self.key).expect("certificate");
            let cert_file = self.dir.join(format!("{file}.pem"));
            let key_file = self.dir.join(format!("{file}-key.pem"));
            std::fs::write(&cert_file, cert.pem()).expect("write cert");
            std::fs::write(&key_file, key.serialize_pem()).expect("write key");
            (cert_file, key_file)
        }

        /// Turns TLS on in `config` with a certificate from this CA for every replica.
        pub(crate) fn secure(&self, config: &mut ClusterConfig) {
            config.tls = Some(TlsConfig {
                ca_file: self.ca_file.clone(),
                client_cert_file: None,
                client_key_file: None,
                client_cert_auth: false,
            });
            for replica in &mut config.replicas {
                let (cert, key) =
                    self.issue(&format!("r{}", replica.id), &[replica_name(replica.id)]);
                replica.tls_cert_file = Some(cert);
                replica.tls_key_file = Some(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{ClusterConfig, LogMode, Mode};
    use super::testing::TestCa;
    use super::*;

    fn secured(dir: &Path) -> (TestCa, ClusterConfig) {
        let ca = TestCa::new(dir, "ca");
        let mut config = ClusterConfig::local_with_ports(
            1,
            Mode::Bft,
            LogMode::None,
            dir,
            &[7000, 7001, 7002, 7003, 7004, 7005, 7006, 7007],
        );
        ca.secure(&mut config);
        (ca, config)
    }

    fn load_error(config: &ClusterConfig) -> String {
        ReplicaTls::load(config, 0).expect_err("refused").to_string()
    }

    #[test]
    fn missing_or_invalid_files_are_errors_naming_the_field_and_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_ca, config) = secured(dir.path());
        assert!(ReplicaTls::load(&config, 0).expect("loads").is_some());
        assert!(load_client(&config).expect("loads").is_some());

        let mut missing_ca = config.clone();
        missing_ca.tls.as_mut().expect("on").ca_file = dir.path().join("nope.pem");
        let error = load_error(&missing_ca);
        assert!(error.contains("tls.ca_file") && error.contains("nope.pem"), "{error}");
        assert!(error.contains("cannot read"), "{error}");

        let garbage = dir.path().join("garbage.pem");
        std::fs::write(
            &garbage,
            "not a certificate
",
        )
        .expect("write");
        let mut bad_cert = config.clone();
        bad_cert.replicas[0].tls_cert_file = Some(garbage.clone());
        let error = load_error(&bad_cert);
        assert!(error.contains("replica[0].tls_cert_file"), "{error}");
        assert!(error.contains("garbage.pem"), "{error}");

        let mut bad_key = config.clone();
        bad_key.replicas[0].tls_key_file = Some(garbage);
        let error = load_error(&bad_key);
        assert!(error.contains("replica[0].tls_key_file"), "{error}");

        let mut wrong_key = config.clone();
        wrong_key.replicas[0].tls_key_file = config.replicas[1].tls_key_file.clone();
        let error = load_error(&wrong_key);
        assert!(error.contains("replica[0].tls_key_file"), "{error}");
        assert!(error.contains("does not go with"), "{error}");

        let mut unset = config.clone();
        unset.replicas[2].tls_cert_file = None;
        let error = unset.validate().expect_err("a replica without a certificate").to_string();
        assert!(error.contains("replica[2].tls_cert_file"), "{error}");

        let mut half_client = config.clone();
        half_client.tls.as_mut().expect("on").client_cert_file = Some(dir.path().join("c.pem"));
        let error = half_client.validate().expect_err("a certificate without a key").to_string();
        assert!(error.contains("tls.client_key_file"), "{error}");

        let mut required = config.clone();
        required.tls.as_mut().expect("on").client_cert_auth = true;
        let error = load_client(&required).expect_err("no client certificate").to_string();
        assert!(error.contains("tls.client_cert_file"), "{error}");
    }

    #[test]
    fn a_tls_section_round_trips_through_toml_and_is_off_by_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_ca, config) = secured(dir.path());
        let text = config.to_toml();
        assert!(text.contains("[tls]") && text.contains("tls_cert_file"), "{text}");
        assert_eq!(ClusterConfig::from_toml(&text).expect("valid"), config);
        let mut plain = config.clone();
        plain.tls = None;
        for replica in &mut plain.replicas {
            replica.tls_cert_file = None;
            replica.tls_key_file = None;
        }
        assert!(!plain.to_toml().contains("tls"), "{}", plain.to_toml());
        assert!(ReplicaTls::load(&plain, 0).expect("off").is_none());
        assert!(load_client(&plain).expect("off").is_none());
    }
}
