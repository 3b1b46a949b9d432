//! The JWT negative matrix: every way a token can be wrong answers 401
//! with `WWW-Authenticate`, on every layer.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};

use crate::helpers::{Layer, TestApp, problem};

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn claims(aud: &str) -> Value {
    json!({
        "sub": "matrix", "iss": "retail-platform", "aud": aud,
        "exp": now() + 300, "iat": now(), "scope": "ops:read"
    })
}

fn sign(claims: &Value, secret: &[u8]) -> String {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("sign")
}

fn unsigned(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    format!("{header}.{payload}.")
}

#[tokio::test]
async fn every_bad_token_is_a_401_with_a_challenge() {
    let app = TestApp::spawn().await;
    let secret = app
        .platform
        .settings
        .auth
        .hs256_secret
        .expose()
        .as_bytes()
        .to_vec();
    for layer in Layer::ALL {
        let aud = layer.audience();
        let other_aud = if aud == "process-api" {
            "system-api"
        } else {
            "process-api"
        };
        let mut expired = claims(aud);
        expired["exp"] = json!(now() - 60); // beyond the 5 s leeway
        let mut no_exp = claims(aud);
        no_exp.as_object_mut().map(|c| c.remove("exp"));
        let mut wrong_iss = claims(aud);
        wrong_iss["iss"] = json!("someone-else");
        // One signature character changed (to a different one, always).
        let good = sign(&claims(aud), &secret);
        let at = good.len() - 10;
        let replacement = if &good[at..=at] == "A" { "B" } else { "A" };
        let tampered = format!("{}{replacement}{}", &good[..at], &good[at + 1..]);
        let cases: Vec<(&str, Option<String>)> = vec![
            ("no token", None),
            ("malformed", Some("not.a.jwt".into())),
            ("alg none", Some(unsigned(&claims(aud)))),
            (
                "wrong signature",
                Some(sign(&claims(aud), b"another-secret-of-decent-length!")),
            ),
            ("tampered", Some(tampered)),
            ("expired beyond leeway", Some(sign(&expired, &secret))),
            ("missing exp", Some(sign(&no_exp, &secret))),
            (
                "another layer's audience",
                Some(sign(&claims(other_aud), &secret)),
            ),
            ("wrong issuer", Some(sign(&wrong_iss, &secret))),
        ];
        for (case, token) in cases {
            let response = app
                .get(layer, "/v1/ops/dependencies", token.as_deref())
                .await;
            assert!(
                response.headers().contains_key("www-authenticate"),
                "{layer:?} {case}"
            );
            let body = problem(response, 401).await;
            assert!(body["detail"].is_string(), "{layer:?} {case}");
        }
        // The control: a good token passes.
        let good = sign(&claims(aud), &secret);
        let response = app.get(layer, "/v1/ops/dependencies", Some(&good)).await;
        assert_eq!(response.status(), 200, "{layer:?}");
    }
}
