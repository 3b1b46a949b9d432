//! Tests of token verification, service tokens and their keys.
use super::*;
use crate::config::Settings;
use crate::service_keys::KeySet;

/// experience-api's issuer and process-api's authenticator, with one
/// set of service keys.
fn setup() -> (TokenIssuer, Authenticator) {
    let settings = Settings::defaults();
    let keys = KeySet::generate();
    (
        TokenIssuer::new(&settings.auth).with_service_keys(&keys.keys(audience::EXPERIENCE)),
        Authenticator::new(&settings.auth, audience::PROCESS)
            .with_service_keys(&keys.keys(audience::PROCESS)),
    )
}

fn request(audience: &str, ttl: u64) -> TokenRequest {
    TokenRequest {
        audience: audience.into(),
        subject: "web-shop".into(),
        scopes: vec!["inventory:read".into()],
        locations: Some(vec!["S001".into()]),
        on_behalf_of: None,
        ttl_seconds: ttl,
    }
}

#[tokio::test]
async fn accepts_its_own_audience() {
    let (issuer, auth) = setup();
    let token = issuer.mint(&request(audience::PROCESS, 60)).expect("mint");
    let principal = auth.verify(&token).await.expect("valid");
    assert_eq!(principal.subject, "web-shop");
    assert!(principal.has_scope("inventory:read"));
    assert!(principal.can_access("S001") && !principal.can_access("S002"));
}

#[tokio::test]
async fn rejects_other_audiences_and_bad_signatures() {
    let (issuer, auth) = setup();
    let token = issuer
        .mint(&request(audience::EXPERIENCE, 60))
        .expect("mint");
    assert_eq!(
        auth.verify(&token).await.expect_err("wrong aud").status(),
        401
    );
    let mut tampered = issuer.mint(&request(audience::PROCESS, 60)).expect("mint");
    tampered.push('x');
    assert_eq!(
        auth.verify(&tampered).await.expect_err("bad sig").status(),
        401
    );
    assert_eq!(
        auth.verify("not-a-jwt")
            .await
            .expect_err("malformed")
            .status(),
        401
    );
}

#[tokio::test]
async fn a_verified_token_is_remembered_until_it_expires_and_no_longer() {
    let (issuer, auth) = setup();
    let settings = Settings::defaults();
    let token = issuer.mint(&request(audience::PROCESS, 5)).expect("mint");
    let now = unix_now();
    assert!(auth.verified.get(&token, now).is_none());
    let principal = auth.verify(&token).await.expect("valid");
    let remembered = auth.verified.get(&token, now).expect("remembered");
    assert_eq!(remembered, principal);
    // Never past `exp` plus the leeway full verification allows.
    let limit = now + 5 + settings.auth.leeway_seconds + 1;
    assert!(auth.verified.get(&token, limit).is_none());
    // Nor past the memory's own bound for a long-lived token.
    let long = issuer
        .mint(&request(audience::PROCESS, 3_600))
        .expect("mint");
    auth.verify(&long).await.expect("valid");
    assert!(
        auth.verified
            .get(&long, unix_now() + VERIFIED_TTL_SECONDS + 1)
            .is_none()
    );
    // Another token (even one byte longer) is verified in full.
    let mut tampered = token.clone();
    tampered.push('x');
    assert_eq!(
        auth.verify(&tampered).await.expect_err("bad sig").status(),
        401
    );
    assert!(auth.verified.get(&tampered, now).is_none());
}

#[test]
fn remembered_tokens_stay_bounded() {
    let tokens = VerifiedTokens::default();
    let principal = Principal {
        subject: "web-shop".into(),
        scopes: BTreeSet::new(),
        locations: None,
        on_behalf_of: None,
    };
    for n in 0..VERIFIED_MAX {
        tokens.insert(&format!("t{n}"), &principal, 100, 50);
    }
    // Full of live entries: they all go for the new one.
    tokens.insert("fresh", &principal, 300, 60);
    let len = |t: &VerifiedTokens| t.entries.read().expect("lock").len();
    assert_eq!(len(&tokens), 1);
    for n in 0..VERIFIED_MAX - 1 {
        tokens.insert(&format!("t{n}"), &principal, 100, 60);
    }
    // Full again, all but one expired by now: only the live one stays.
    tokens.insert("newer", &principal, 400, 200);
    assert_eq!(len(&tokens), 2);
    assert!(tokens.get("fresh", 200).is_some());
    assert!(tokens.get("t0", 200).is_none());
}

#[test]
fn a_service_token_is_reused_only_for_exactly_the_same_call() {
    let (issuer, _) = setup();
    let user = |locations: &[&str]| Principal {
        subject: "associate-7".into(),
        scopes: BTreeSet::new(),
        locations: Some(locations.iter().map(|l| (*l).to_owned()).collect()),
        on_behalf_of: None,
    };
    let token = |scopes: &[&str], principal: &Principal| {
        issuer
            .service_token("experience-api", audience::PROCESS, scopes, Some(principal))
            .expect("mint")
    };
    let first = token(&["inventory:read"], &user(&["S001"]));
    assert_eq!(token(&["inventory:read"], &user(&["S001"])), first);
    // Another scope set, location binding or user: another token.
    assert_ne!(token(&["inventory:write"], &user(&["S001"])), first);
    let two = token(&["inventory:read"], &user(&["S001", "S002"]));
    assert_ne!(two, first);
    assert_ne!(token(&["inventory:read"], &user(&["S001,S002"])), two);
    let other = Principal {
        subject: "associate-8".into(),
        ..user(&["S001"])
    };
    assert_ne!(token(&["inventory:read"], &other), first);
}

#[tokio::test]
async fn a_service_token_is_accepted_only_from_a_layer_allowed_to_call() {
    let settings = Settings::defaults();
    let keys = KeySet::generate();
    let edge = TokenIssuer::new(&settings.auth).with_service_keys(&keys.keys(audience::EXPERIENCE));
    let process = TokenIssuer::new(&settings.auth).with_service_keys(&keys.keys(audience::PROCESS));
    let system = Authenticator::new(&settings.auth, audience::SYSTEM)
        .with_service_keys(&keys.keys(audience::SYSTEM));
    // The internet-facing edge mints a system-api token with the
    // scopes of the systems of record: refused.
    let forged = edge
        .service_token(
            "experience-api",
            audience::SYSTEM,
            &["erp:write", "ops:write"],
            None,
        )
        .expect("the edge can sign");
    let error = system
        .verify(&forged)
        .await
        .expect_err("edge key at system-api");
    assert_eq!(error.status(), 401);
    // Relabelled as process-api's, it still fails: the key decides.
    let relabelled = {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some("svc:process-api".into());
        let key = keys.keys(audience::EXPERIENCE).signing.expect("key").1;
        let claims = Claims {
            sub: "svc:process-api".into(),
            iss: settings.auth.issuer.clone(),
            aud: Audiences::One(audience::SYSTEM.into()),
            exp: unix_now() + 60,
            iat: unix_now(),
            scope: "erp:write".into(),
            locations: None,
            on_behalf_of: Some("someone".into()),
            jti: None,
        };
        jsonwebtoken::encode(&header, &claims, &key).expect("sign")
    };
    assert_eq!(
        system
            .verify(&relabelled)
            .await
            .expect_err("forged")
            .status(),
        401
    );
    // process-api's own token passes.
    let real = process
        .service_token("process-api", audience::SYSTEM, &["erp:write"], None)
        .expect("sign");
    let principal = system.verify(&real).await.expect("process-api may call");
    assert_eq!(principal.subject, "svc:process-api");
    // A layer cannot sign for another.
    assert!(
        edge.service_token("process-api", audience::SYSTEM, &[], None)
            .is_err()
    );
    // Without keys a layer accepts no service token at all.
    let bare = Authenticator::new(&settings.auth, audience::SYSTEM);
    assert_eq!(bare.verify(&real).await.expect_err("no keys").status(), 401);
}

#[tokio::test]
async fn channel_tokens_never_act_for_someone_else_nor_pass_for_a_layer() {
    let (issuer, auth) = setup();
    let mut request = request(audience::PROCESS, 60);
    request.on_behalf_of = Some("store-manager-9".into());
    let token = issuer.mint(&request).expect("mint");
    let principal = auth.verify(&token).await.expect("valid");
    assert_eq!(principal.on_behalf_of, None);
    assert_eq!(principal.actor(), "web-shop");
    // HS256 with a service's subject: refused, secret or not.
    request.subject = "svc:experience-api".into();
    let token = issuer.mint(&request).expect("mint");
    assert_eq!(auth.verify(&token).await.expect_err("svc").status(), 401);
}

#[tokio::test]
async fn identity_provider_tokens_may_carry_an_audience_array_and_no_iat() {
    let settings = Settings::defaults();
    let auth = Authenticator::new(&settings.auth, audience::PROCESS);
    let claims = serde_json::json!({
        "sub": "partner-x",
        "iss": settings.auth.issuer,
        "aud": ["https://api.example.com", "process-api"],
        "exp": unix_now() + 60,
        "scope": "inventory:read",
    });
    let key = EncodingKey::from_secret(settings.auth.hs256_secret.expose().as_bytes());
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).expect("sign");
    let principal = auth.verify(&token).await.expect("array aud, no iat");
    assert_eq!(principal.subject, "partner-x");
    let other = serde_json::json!({
        "sub": "partner-x", "iss": settings.auth.issuer,
        "aud": ["experience-api"], "exp": unix_now() + 60,
    });
    let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &other, &key).expect("sign");
    assert_eq!(
        auth.verify(&token).await.expect_err("not ours").status(),
        401
    );
}

#[tokio::test]
async fn service_tokens_carry_the_end_user() {
    let (issuer, auth) = setup();
    let user = Principal {
        subject: "associate-7".into(),
        scopes: BTreeSet::new(),
        locations: Some(["S001".to_owned()].into()),
        on_behalf_of: None,
    };
    let token = issuer
        .service_token(
            "experience-api",
            audience::PROCESS,
            &["inventory:read"],
            Some(&user),
        )
        .expect("mint");
    let principal = auth.verify(&token).await.expect("valid");
    assert_eq!(principal.subject, "svc:experience-api");
    assert_eq!(principal.actor(), "associate-7");
    assert!(!principal.can_access("S002"));
}
