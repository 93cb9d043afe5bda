//! What went wrong in a TLS handshake, read from the text of a client's error.
//!
//! The Redis, SQL and etcd clients all verify certificates with rustls but report its errors
//! in their own wrappers, as text. Each store turns a [`CertFault`] into advice that names its
//! own URL parameters; the reading of rustls's words lives here, once.

/// A TLS failure that trying again cannot fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CertFault {
    /// The server's certificate is not signed by a trusted CA.
    UnknownCa,
    /// The server's certificate does not name the host connected to.
    WrongName,
    /// A certificate is expired or not yet valid.
    OutsideValidity,
    /// The server requires a client certificate.
    ClientCertRequired,
    /// The server sent a fatal alert during the handshake (often: it wants a client
    /// certificate it trusts).
    Refused,
    /// The server's certificate was refused for another reason.
    OtherCertificate,
}

impl CertFault {
    /// The fault named in `text` (an error's message, with its sources), if any.
    pub fn read(text: &str) -> Option<CertFault> {
        let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
        Some(if has(&["UnknownIssuer", "BadSignature"]) {
            CertFault::UnknownCa
        } else if has(&["NotValidForName", "not valid for name"]) {
            CertFault::WrongName
        } else if has(&["Expired", "NotValidYet"]) {
            CertFault::OutsideValidity
        } else if has(&["CertificateRequired"]) {
            CertFault::ClientCertRequired
        } else if has(&["invalid peer certificate"]) {
            CertFault::OtherCertificate
        } else if has(&["received fatal alert"]) {
            CertFault::Refused
        } else {
            return None;
        })
    }
}

/// An error's message followed by those of its sources that it does not already include.
#[cfg_attr(not(any(feature = "etcd", feature = "consul")), allow(dead_code))]
pub(crate) fn chain_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = s.source();
    }
    text
}

/// The advice every store gives for an expired or not yet valid certificate.
pub(crate) const RENEW_OR_CHECK_CLOCKS: &str =
    "a certificate is outside its validity period: renew it, or check the clocks";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_errors_as_the_clients_print_them() {
        let read = CertFault::read;
        assert_eq!(
            read("invalid peer certificate: UnknownIssuer"),
            Some(CertFault::UnknownCa)
        );
        assert_eq!(
            read(
                "invalid peer certificate: certificate not valid for name \"10.0.0.1\"; certificate is only valid for DnsName(\"db\")"
            ),
            Some(CertFault::WrongName)
        );
        assert_eq!(
            read("invalid peer certificate: NotValidForName"),
            Some(CertFault::WrongName)
        );
        assert_eq!(
            read("invalid peer certificate: Expired"),
            Some(CertFault::OutsideValidity)
        );
        assert_eq!(
            read("received fatal alert: CertificateRequired"),
            Some(CertFault::ClientCertRequired)
        );
        assert_eq!(
            read("received fatal alert: BadCertificate"),
            Some(CertFault::Refused)
        );
        assert_eq!(
            read("invalid peer certificate: UnsupportedSignatureAlgorithm"),
            Some(CertFault::OtherCertificate)
        );
        assert_eq!(read("Connection refused (os error 111)"), None);
    }
}
