//! The agent's HTTP API, through hyper (hyper-util's pooled client, hyper-rustls for
//! `consuls://`): one request, its status, its `X-Consul-Index` and its body, with failures
//! mapped onto Baton's errors. The ACL token goes in the `X-Consul-Token` header and nowhere
//! else: never in a URL, an error or a log line.

use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::STORE;
use super::url::{Target, Tls};
use crate::store::cert::{CertFault, RENEW_OR_CHECK_CLOCKS, chain_text};
use crate::{Error, Result};

/// An answer of the agent.
#[derive(Debug)]
pub(super) struct Reply {
    pub status: StatusCode,
    /// `X-Consul-Index`, when sent.
    pub index: Option<u64>,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim().to_owned()
    }
}

/// What a request does, for mapping its failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    /// Changes nothing: a failure means nothing happened.
    Read,
    /// May change something: a failure after sending leaves the outcome unknown.
    Write,
}

/// A client for one agent.
pub(super) struct Agent {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    token: Option<String>,
    dc: Option<String>,
    /// The redacted URL, for errors.
    location: String,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// A client for `target`. Reads the TLS files now, so a missing file is a configuration
    /// error at once.
    pub fn new(target: &Target, location: String) -> Result<Agent> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let connector = match &target.tls {
            Some(tls) => builder
                .with_tls_config(tls_config(tls, &location)?)
                .https_only()
                .enable_http1()
                .wrap_connector(http),
            None => builder
                .with_tls_config(
                    rustls::ClientConfig::builder_with_provider(provider())
                        .with_safe_default_protocol_versions()
                        .map_err(|e| Error::Config(format!("{location}: TLS: {e}")))?
                        .with_root_certificates(rustls::RootCertStore::empty())
                        .with_no_client_auth(),
                )
                .https_or_http()
                .enable_http1()
                .wrap_connector(http),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Agent {
            client,
            base: target.base.clone(),
            token: target.token.clone(),
            dc: target.dc.clone(),
            location,
        })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    /// Send `method path` (a path with its query, without `dc`), with `body`, and wait at
    /// most `timeout` for the whole answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        kind: Kind,
        timeout: Option<Duration>,
    ) -> Result<Reply> {
        let mut uri = format!("{}{path}", self.base);
        if let Some(dc) = &self.dc {
            uri.push(if path.contains('?') { '&' } else { '?' });
            uri.push_str("dc=");
            uri.push_str(dc);
        }
        let mut request = Request::builder().method(method).uri(&uri);
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token);
        }
        if body.is_some() {
            request = request.header("Content-Type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Error::Config(format!("{}: a bad request {path}: {e}", self.location)))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| self.transport_error(&e, kind))?;
            let status = response.status();
            let index = response
                .headers()
                .get("X-Consul-Index")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok());
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| self.failure(format!("reading the answer: {e}"), kind))?
                .to_bytes();
            Ok(Reply {
                status,
                index,
                body,
            })
        };
        let reply = match timeout {
            Some(limit) => tokio::time::timeout(limit, exchange)
                .await
                .map_err(|_| self.failure(format!("no answer within {limit:?}"), kind))??,
            None => exchange.await?,
        };
        if reply.status == StatusCode::FORBIDDEN {
            return Err(Error::Config(format!(
                "the Consul agent at {} refused the ACL token{} ({}): give a token with key:write on the election's key and session:write (the store URL's ?token=, or CONSUL_HTTP_TOKEN for the baton command)",
                self.location,
                if self.token.is_some() {
                    ""
                } else {
                    " (none was given)"
                },
                reply.text(),
            )));
        }
        Ok(reply)
    }

    fn failure(&self, message: String, kind: Kind) -> Error {
        let message = format!("{}: {message}", self.location);
        match kind {
            Kind::Read => Error::Unavailable {
                store: STORE,
                message,
                source: None,
            },
            Kind::Write => Error::Indeterminate {
                store: STORE,
                message,
                source: None,
            },
        }
    }

    fn transport_error(&self, e: &hyper_util::client::legacy::Error, kind: Kind) -> Error {
        let text = chain_text(e);
        if let Some(fault) = CertFault::read(&text) {
            let advice = match fault {
                CertFault::UnknownCa => {
                    "the agent's certificate is not signed by a trusted CA: give its CA with ?ca=PATH"
                }
                CertFault::WrongName => {
                    "the agent's certificate does not name the host in the URL: connect by a name it lists"
                }
                CertFault::OutsideValidity => RENEW_OR_CHECK_CLOCKS,
                CertFault::ClientCertRequired | CertFault::Refused => {
                    "the agent refused the TLS handshake: it may require a client certificate (?cert=PATH&key=PATH) signed by a CA it trusts"
                }
                CertFault::OtherCertificate => "the agent's certificate was refused",
            };
            return Error::Config(format!("{}: {advice} ({text})", self.location));
        }
        let message = format!("{}: {text}", self.location);
        if e.is_connect() || kind == Kind::Read {
            Error::Unavailable {
                store: STORE,
                message,
                source: None,
            }
        } else {
            Error::Indeterminate {
                store: STORE,
                message,
                source: None,
            }
        }
    }
}

fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::ring::default_provider())
}

/// rustls with ring: the CA file's certificates (else the system's trust store) and the
/// client certificate, if any.
fn tls_config(tls: &Tls, location: &str) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let config_error = |what: String| Error::Config(format!("{location}: {what}"));
    let mut roots = rustls::RootCertStore::empty();
    match &tls.ca {
        Some(path) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                .and_then(|i| i.collect())
                .map_err(|e| config_error(format!("cannot read the CA file ca={path}: {e}")))?;
            if certs.is_empty() {
                return Err(config_error(format!(
                    "the CA file ca={path} holds no certificate"
                )));
            }
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| config_error(format!("the CA file ca={path}: {e}")))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|i| i.collect())
                .map_err(|e| {
                    config_error(format!("cannot read the certificate cert={cert}: {e}"))
                })?;
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| config_error(format!("cannot read the private key key={key}: {e}")))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| config_error(format!("the client certificate cert={cert}: {e}")))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}
