//! Test certificates made with rcgen: a CA and certificates it signs, as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A certificate authority whose certificate is written to `<dir>/<name>-ca.pem`.
pub struct TestCa {
    pub cert: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
    name: String,
}

/// A certificate and its key, as PEM files.
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Identity {
    /// Its paths as `--{prefix}cert-file C --{prefix}key-file K` flags.
    pub fn flags(&self, prefix: &str) -> Vec<String> {
        vec![
            format!("--{prefix}cert-file"),
            self.cert.display().to_string(),
            format!("--{prefix}key-file"),
            self.key.display().to_string(),
        ]
    }
}

fn write(path: PathBuf, pem: &str) -> PathBuf {
    std::fs::write(&path, pem).expect("write a PEM file");
    path
}

impl TestCa {
    /// A new self-signed CA named `name`, its files in `dir`.
    pub fn new(dir: &Path, name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA cert");
        TestCa {
            cert: write(dir.join(format!("{name}-ca.pem")), &cert.pem()),
            issuer: Issuer::new(params, key),
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    /// A certificate with common name `cn` valid for the names and addresses `sans`, signed by
    /// this CA (no extended key usage: it serves as server and as client certificate).
    pub fn issue(&self, cn: &str, sans: &[&str]) -> Identity {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(sans).expect("certificate params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("certificate");
        let stem = format!("{}-{cn}", self.name);
        Identity {
            cert: write(self.dir.join(format!("{stem}.pem")), &cert.pem()),
            key: write(
                self.dir.join(format!("{stem}-key.pem")),
                &key.serialize_pem(),
            ),
        }
    }
}
