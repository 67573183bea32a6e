//! The certificates of a CA a test makes (shared with the query-service
//! tests, which include this file).

use std::path::{Path, PathBuf};

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

/// A CA, and a server certificate it signed for `localhost` and
/// 127.0.0.1, written as PEM files.
pub struct Certs {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// A client certificate the CA signed (for servers that verify clients).
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The server key's SubjectPublicKeyInfo hash (base64 of SHA-256), as
    /// Chromium's `--ignore-certificate-errors-spki-list` takes it.
    pub server_spki_sha256: String,
}

impl Certs {
    /// Writes them into `dir`, their names starting with `name`.
    pub fn new(dir: &Path, name: &str) -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("copilot test CA {name}"));
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = ca_params.self_signed(&ca_key).expect("CA certificate");
        let leaf = |names: Vec<String>| {
            let key = KeyPair::generate().expect("key");
            let cert = CertificateParams::new(names)
                .expect("params")
                .signed_by(&key, &ca, &ca_key)
                .expect("signed");
            (cert.pem(), key.serialize_pem(), key.public_key_der())
        };
        let (server_pem, server_key, server_spki) =
            leaf(vec!["localhost".into(), "127.0.0.1".into()]);
        let (client_pem, client_key, _) = leaf(vec!["copilot-client".into()]);
        let write = |file: &str, text: &str, mode: u32| {
            let path = dir.join(format!("{name}-{file}"));
            std::fs::write(&path, text).expect("write PEM");
            set_mode(&path, mode);
            path
        };
        Certs {
            ca: write("ca.crt", &ca.pem(), 0o644),
            cert: write("server.crt", &server_pem, 0o644),
            key: write("server.key", &server_key, 0o600),
            client_cert: write("client.crt", &client_pem, 0o644),
            client_key: write("client.key", &client_key, 0o600),
            server_spki_sha256: {
                use base64::Engine as _;
                use sha2::Digest as _;
                base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&server_spki))
            },
        }
    }
}
