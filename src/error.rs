use std::path::PathBuf;

/// Errors at agentguard's library boundary. Binaries wrap them with `anyhow` for context.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot write {path}: {source}")]
    WriteFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid PEM in {what}: {detail}")]
    Pem { what: String, detail: String },

    #[error("TLS configuration rejected: {0}")]
    Tls(#[from] rustls::Error),

    #[error("cannot generate certificate: {0}")]
    Certificate(#[from] rcgen::Error),

    #[error("invalid agent definition: {0}")]
    Agents(#[from] crate::policy::GlobError),

    #[error("cannot reach the Kubernetes API (kubeconfig or in-cluster config): {0}")]
    Kube(#[source] kube::Error),

    #[error("cannot serve on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
