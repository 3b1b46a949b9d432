//! Delivery signatures: the Standard Webhooks scheme, and the legacy
//! header during its deprecation period.
//!
//! Standard Webhooks (<https://www.standardwebhooks.com/>): every request
//! carries `webhook-id` (the delivery's id, the same on every retry of
//! it), `webhook-timestamp` (unix seconds of this attempt) and
//! `webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`,
//! so a receiver can refuse stale timestamps (replays) and verify with a
//! published verifier.
//!
//! The HMAC key is the subscription's secret: a `whsec_<base64>` secret
//! (what registration generates) is the key's base64, as the published
//! verifiers expect; any other secret (registered before this scheme, or
//! chosen by the subscriber) is used as its raw UTF-8 bytes, which the
//! verifiers take with their raw-key option (e.g. `new Webhook(secret,
//! { format: "raw" })`).
//!
//! The legacy `X-Signature-256: sha256=<hex HMAC-SHA256 of the body>`
//! (keyed by the secret's characters, whatever its form) is still sent
//! until [`LEGACY_SUNSET`], deprecated since [`LEGACY_DEPRECATED`]; each
//! delivery announces it with `Deprecation` (RFC 9745), `Sunset`
//! (RFC 8594) and a `Link` to the documentation (`rel="deprecation"`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{KeyInit, Mac};

/// `webhook-id`.
pub const ID_HEADER: &str = "webhook-id";
/// `webhook-timestamp`.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// `webhook-signature`.
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// The deprecated signature header.
pub const LEGACY_SIGNATURE_HEADER: &str = "x-signature-256";
/// The prefix of Standard Webhooks secrets.
pub const SECRET_PREFIX: &str = "whsec_";

/// When the legacy header was deprecated (RFC 3339).
pub const LEGACY_DEPRECATED: &str = "2026-12-07T00:00:00Z";
/// When the legacy header may stop being sent (RFC 3339).
pub const LEGACY_SUNSET: &str = "2027-06-30T00:00:00Z";
/// `Deprecation` of the legacy header: [`LEGACY_DEPRECATED`] as
/// `@<unix seconds>` (RFC 9745).
pub const DEPRECATION_VALUE: &str = "@1796601600";
/// `Sunset` of the legacy header: [`LEGACY_SUNSET`] as an HTTP-date.
pub const SUNSET_VALUE: &str = "Wed, 30 Jun 2027 00:00:00 GMT";
/// `Link` to the documentation of the change.
pub const LINK_VALUE: &str = concat!(
    "<",
    env!("CARGO_PKG_REPOSITORY"),
    "#webhooks>; rel=\"deprecation\"; type=\"text/html\""
);

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// The HMAC key of `secret`: the decoded base64 of a `whsec_` secret,
/// else the secret's bytes (also for a `whsec_` secret that is not
/// base64, which registration refuses but an older row may hold).
pub fn signing_key(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix(SECRET_PREFIX)
        .and_then(|encoded| BASE64.decode(encoded).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

/// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`.
pub fn signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    let digest = hmac(
        key,
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
    );
    format!("v1,{}", BASE64.encode(digest))
}

/// The legacy `sha256=<hex HMAC-SHA256 of the body>`, keyed by the
/// secret's characters.
pub fn legacy_signature(secret: &str, body: &[u8]) -> String {
    let digest = hmac(secret.as_bytes(), &[body]);
    let mut out = String::with_capacity(7 + digest.len() * 2);
    out.push_str("sha256=");
    for byte in digest {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// A fresh secret: `whsec_` and the base64 of 256 random bits.
pub fn new_secret() -> String {
    let key: [u8; 32] = rand::random();
    format!("{SECRET_PREFIX}{}", BASE64.encode(key))
}

/// Why a subscriber's own secret is refused, if it is: a `whsec_` secret
/// must be the base64 of 24 to 64 bytes (the Standard Webhooks range).
pub fn secret_problem(secret: &str) -> Option<&'static str> {
    let encoded = secret.strip_prefix(SECRET_PREFIX)?;
    match BASE64.decode(encoded) {
        Ok(key) if (24..=64).contains(&key.len()) => None,
        _ => Some("a whsec_ secret must be the base64 of 24 to 64 bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_standard_webhooks_reference() {
        // The test vector of the Standard Webhooks reference libraries.
        let key = signing_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        assert_eq!(
            signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_without_the_prefix_are_raw_keys() {
        assert_eq!(signing_key("a-test-secret"), b"a-test-secret");
        assert_eq!(signing_key("whsec_%%%"), b"whsec_%%%");
        assert_eq!(signing_key("whsec_AAEC"), [0, 1, 2]);
    }

    #[test]
    fn legacy_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        assert_eq!(
            legacy_signature("Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn generated_secrets_are_fresh_standard_secrets() {
        let a = new_secret();
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(signing_key(&a).len(), 32);
        assert_eq!(secret_problem(&a), None);
        assert_ne!(a, new_secret());
        assert!(secret_problem("whsec_not base64!").is_some());
        assert!(secret_problem("whsec_AAEC").is_some(), "too short a key");
        assert_eq!(secret_problem("any-other-secret-of-length"), None);
    }

    #[test]
    fn lifecycle_values_are_the_documented_dates() {
        use time::OffsetDateTime;
        use time::format_description::well_known::Rfc3339;
        let deprecated = OffsetDateTime::parse(LEGACY_DEPRECATED, &Rfc3339).expect("date");
        assert_eq!(
            DEPRECATION_VALUE,
            format!("@{}", deprecated.unix_timestamp())
        );
        let sunset = OffsetDateTime::parse(LEGACY_SUNSET, &Rfc3339).expect("date");
        let http_date = time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        );
        assert_eq!(SUNSET_VALUE, sunset.format(&http_date).expect("format"));
        assert!(sunset > deprecated);
    }
}
