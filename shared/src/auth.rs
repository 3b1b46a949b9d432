//! Authentication and authorization.
//!
//! - [`Authenticator`] verifies bearer JWTs for one audience (each service
//!   accepts only its own), with algorithms pinned by configuration, `exp`,
//!   `iss` and `aud` required, and a small configured leeway.
//! - [`Principal`] is the verified caller; [`Authorized<S>`] extracts it and
//!   checks the route's scope `S` in one step, answering 401 or 403 problems.
//! - [`TokenIssuer`] mints tokens: the `token` CLI command, and the
//!   short-lived service tokens one layer uses to call the next. A service
//!   token has the next layer's audience, only the scopes the call needs,
//!   `sub` = the calling service and `on_behalf_of` = the end user, so the
//!   inner layer can audit who acted while a channel token (audience
//!   `experience-api`) can never be replayed against an inner layer.

use std::collections::{BTreeSet, HashMap};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::FromRequestParts;
use axum::http::{header, request::Parts};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthSettings;
use crate::problem::Problem;
use crate::service_keys::ServiceKeys;

/// The audiences of the three layers.
pub mod audience {
    /// experience-api.
    pub const EXPERIENCE: &str = "experience-api";
    /// process-api.
    pub const PROCESS: &str = "process-api";
    /// system-api.
    pub const SYSTEM: &str = "system-api";
    /// All of them, for validation of CLI input.
    pub const ALL: [&str; 3] = [EXPERIENCE, PROCESS, SYSTEM];
}

/// The scope names: the pinned ones (DESIGN.md §4), then `erp:read` and
/// `erp:write`, which only process-api's service tokens carry (ERP
/// balances and master data; ERP postings) when it calls system-api.
pub const SCOPES: [&str; 14] = [
    "availability:read",
    "reservations:write",
    "inventory:read",
    "inventory:write",
    "master:write",
    "transfers:write",
    "transfers:approve",
    "returns:write",
    "pos:write",
    "wms:write",
    "ops:read",
    "ops:write",
    "erp:read",
    "erp:write",
];

/// The claims this platform reads and writes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// Client (or service) identity.
    pub sub: String,
    /// Issuer.
    pub iss: String,
    /// Audience: the one layer this token is for. Identity providers may
    /// send an array (RFC 7519 §4.1.3); verification requires ours in it.
    pub aud: Audiences,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Issued at (written by this platform; not required from others).
    #[serde(default)]
    pub iat: u64,
    /// Space-separated scopes.
    #[serde(default)]
    pub scope: String,
    /// Location binding; absent means all locations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locations: Option<Vec<String>>,
    /// On service tokens: the end user the service acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_behalf_of: Option<String>,
    /// Token id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// The `aud` claim: one audience or several.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audiences {
    /// `"aud": "process-api"`.
    One(String),
    /// `"aud": ["process-api", "other"]`.
    Many(Vec<String>),
}

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `sub` of the token: the client or the calling service.
    pub subject: String,
    /// Granted scopes.
    pub scopes: BTreeSet<String>,
    /// Location binding; `None` means unrestricted.
    pub locations: Option<BTreeSet<String>>,
    /// The end user behind a service token.
    pub on_behalf_of: Option<String>,
}

impl Principal {
    /// The identity to record in audits: the end user when a service acted
    /// for one, else the caller.
    pub fn actor(&self) -> &str {
        self.on_behalf_of.as_deref().unwrap_or(&self.subject)
    }

    /// Whether the scope was granted.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.contains(scope)
    }

    /// 403 unless the scope was granted.
    pub fn require_scope(&self, scope: &str) -> Result<(), Problem> {
        if self.has_scope(scope) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "this operation needs the scope `{scope}`"
            )))
        }
    }

    /// Whether the caller may act on the location.
    pub fn can_access(&self, location_id: &str) -> bool {
        self.locations
            .as_ref()
            .is_none_or(|allowed| allowed.contains(location_id))
    }

    /// A location filter narrowed to what the caller may see: a bound
    /// caller asking for nothing in particular gets its locations, one
    /// naming others gets 403, and one bound to no location gets 403.
    pub fn narrow_locations(&self, requested: Vec<String>) -> Result<Vec<String>, Problem> {
        let Some(bound) = &self.locations else {
            return Ok(requested);
        };
        if bound.is_empty() {
            return Err(Problem::forbidden("this token may see no location"));
        }
        if requested.is_empty() {
            return Ok(bound.iter().cloned().collect());
        }
        for location in &requested {
            self.require_location(location)?;
        }
        Ok(requested)
    }

    /// 403 unless the caller may act on the location.
    pub fn require_location(&self, location_id: &str) -> Result<(), Problem> {
        if self.can_access(location_id) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "the token is not bound to location `{location_id}`"
            )))
        }
    }
}

/// Verifies tokens for one audience.
///
/// HS256 tokens are checked with the configured secret; RS256 and ES256
/// tokens with the key their `kid` names in the JWKS (see [`Jwks`]). The
/// algorithm must be allowed by configuration *and* match the key: the
/// header's `alg` only selects, it never widens what is accepted.
pub struct Authenticator {
    audience: String,
    issuer: String,
    leeway: u64,
    allowed: Vec<Algorithm>,
    hs256: DecodingKey,
    jwks: Option<Arc<Jwks>>,
    /// Public keys of the layers allowed to call this one, by service name
    /// (see [`crate::service_keys`]).
    callers: HashMap<String, DecodingKey>,
    verified: VerifiedTokens,
}

/// How long a verified token is answered from memory before it is checked
/// again in full (never past its `exp` plus the leeway). Keys of a JWKS are
/// trusted for `jwks_cache_seconds` anyway; this bound is shorter.
const VERIFIED_TTL_SECONDS: u64 = 60;
/// Most tokens remembered; past it the expired ones go, then all of them.
/// Only tokens that passed verification are remembered, so a caller
/// without a valid token cannot grow it.
const VERIFIED_MAX: usize = 10_000;

/// Tokens this authenticator verified recently, with the principal they
/// carry and until when (unix seconds, exclusive) that answer holds. A
/// channel sends the same token with every request until it expires;
/// decoding and checking its signature again each time was about a tenth
/// of an availability read's cost. Keyed by the whole token, so only the
/// exact bytes that were verified hit.
#[derive(Debug, Default)]
struct VerifiedTokens {
    entries: std::sync::RwLock<HashMap<Box<str>, (Principal, u64)>>,
}

impl VerifiedTokens {
    fn get(&self, token: &str, now: u64) -> Option<Principal> {
        let entries = self
            .entries
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .get(token)
            .filter(|(_, until)| now < *until)
            .map(|(principal, _)| principal.clone())
    }

    fn insert(&self, token: &str, principal: &Principal, until: u64, now: u64) {
        let mut entries = self
            .entries
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= VERIFIED_MAX {
            entries.retain(|_, (_, until)| now < *until);
            if entries.len() >= VERIFIED_MAX {
                entries.clear();
            }
        }
        entries.insert(token.into(), (principal.clone(), until));
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("audience", &self.audience)
            .field("allowed", &self.allowed)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator for `audience` from the auth settings.
    pub fn new(settings: &AuthSettings, audience: &str) -> Self {
        let allowed = settings
            .algorithms
            .iter()
            .filter_map(|a| a.parse::<Algorithm>().ok())
            .filter(|a| matches!(a, Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256))
            .collect();
        let jwks = (!settings.jwks_url.is_empty()).then(|| {
            Arc::new(Jwks::new(
                &settings.jwks_url,
                Duration::from_secs(settings.jwks_cache_seconds),
                Duration::from_secs(settings.jwks_min_refresh_seconds),
            ))
        });
        Self {
            audience: audience.to_owned(),
            issuer: settings.issuer.clone(),
            leeway: settings.leeway_seconds,
            allowed,
            hs256: DecodingKey::from_secret(settings.hs256_secret.expose().as_bytes()),
            jwks,
            callers: HashMap::new(),
            verified: VerifiedTokens::default(),
        }
    }

    /// Accepts service tokens from the callers in `keys` (and only those:
    /// without keys, no service token is accepted).
    pub fn with_service_keys(mut self, keys: &ServiceKeys) -> Self {
        self.callers = keys.verifying.clone();
        self
    }

    /// The audience this authenticator accepts.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = self.leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.set_audience(&[self.audience.as_str()]);
        validation.set_issuer(&[self.issuer.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation
    }

    /// Verifies a compact JWT (a token verified within the last minute is
    /// answered from memory while it has not expired).
    pub async fn verify(&self, token: &str) -> Result<Principal, Problem> {
        let now = unix_now();
        if let Some(principal) = self.verified.get(token, now) {
            return Ok(principal);
        }
        let (principal, expires) = self.verify_in_full(token).await?;
        let until = expires
            .saturating_add(self.leeway)
            .min(now + VERIFIED_TTL_SECONDS);
        self.verified.insert(token, &principal, until, now);
        Ok(principal)
    }

    /// Verifies a token without the memory of [`Authenticator::verify`]:
    /// its principal and `exp`.
    async fn verify_in_full(&self, token: &str) -> Result<(Principal, u64), Problem> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Problem::unauthorized("the token is malformed"))?;
        if header.alg == Algorithm::EdDSA {
            return self.verify_service_token(token, header.kid.as_deref());
        }
        if !self.allowed.contains(&header.alg) {
            return Err(Problem::unauthorized("the token algorithm is not allowed"));
        }
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.clone(),
            algorithm => {
                let kid = header
                    .kid
                    .ok_or_else(|| Problem::unauthorized("the token names no key (kid)"))?;
                let jwks = self
                    .jwks
                    .as_ref()
                    .ok_or_else(|| Problem::unauthorized("no key set is configured"))?;
                let (key, key_algorithm) = jwks
                    .key(&kid)
                    .await
                    .ok_or_else(|| Problem::unauthorized("the token's key (kid) is unknown"))?;
                if key_algorithm != algorithm {
                    return Err(Problem::unauthorized(
                        "the token algorithm does not match its key",
                    ));
                }
                key
            }
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation(header.alg))
            .map_err(|error| Problem::unauthorized(describe(&error)))?;
        let claims = data.claims;
        // Service identities and acting for someone else belong to service
        // tokens alone: a channel token (or anyone holding the HS256
        // secret) cannot pass for a layer or choose whom it audits as.
        if claims.sub.starts_with(SERVICE_SUBJECT_PREFIX) {
            return Err(Problem::unauthorized(
                "service identities are reserved for service tokens",
            ));
        }
        let principal = Principal {
            subject: claims.sub,
            scopes: claims.scope.split_whitespace().map(str::to_owned).collect(),
            locations: claims.locations.map(|l| l.into_iter().collect()),
            on_behalf_of: None,
        };
        Ok((principal, claims.exp))
    }

    /// A service token (EdDSA): accepted only when its `kid` names a layer
    /// allowed to call this one and that layer's key signed it; then its
    /// `on_behalf_of` is the acting end user.
    fn verify_service_token(
        &self,
        token: &str,
        kid: Option<&str>,
    ) -> Result<(Principal, u64), Problem> {
        let caller = kid
            .and_then(|kid| kid.strip_prefix(SERVICE_SUBJECT_PREFIX))
            .ok_or_else(|| Problem::unauthorized("the service token names no calling layer"))?;
        let key = self.callers.get(caller).ok_or_else(|| {
            Problem::unauthorized("this service accepts no service token from that layer")
        })?;
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation(Algorithm::EdDSA))
            .map_err(|error| Problem::unauthorized(describe(&error)))?;
        let claims = data.claims;
        if claims.sub != crate::service_keys::key_id(caller) {
            return Err(Problem::unauthorized(
                "the service token's subject is not the layer that signed it",
            ));
        }
        let principal = Principal {
            subject: claims.sub,
            scopes: claims.scope.split_whitespace().map(str::to_owned).collect(),
            locations: claims.locations.map(|l| l.into_iter().collect()),
            on_behalf_of: claims.on_behalf_of,
        };
        Ok((principal, claims.exp))
    }

    /// Verifies the `Authorization: Bearer` header of a request.
    pub async fn verify_header(&self, parts: &Parts) -> Result<Principal, Problem> {
        self.verify(bearer(&parts.headers)?).await
    }

    /// The principal of a token this authenticator verified within the
    /// last minute and that has not expired; `None` for any other token
    /// (which [`Authenticator::verify`] then checks in full). Never waits.
    pub fn remembered(&self, token: &str) -> Option<Principal> {
        self.verified.get(token, unix_now())
    }
}

/// The token of an `Authorization: Bearer` header.
pub fn bearer(headers: &axum::http::HeaderMap) -> Result<&str, Problem> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| Problem::unauthorized("missing Authorization: Bearer token"))?;
    let value = value
        .to_str()
        .map_err(|_| Problem::unauthorized("the Authorization header is not ASCII"))?;
    // The scheme is case-insensitive (RFC 9110 §11.1).
    value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| Problem::unauthorized("the Authorization scheme must be Bearer"))
}

/// Keys by `kid`, with the algorithm each is for.
type KeyMap = HashMap<String, (DecodingKey, Algorithm)>;

/// A cached JSON Web Key Set, fetched with reqwest. Keys are trusted for
/// the cache time; an unknown `kid` (key rotation) or an expired cache
/// triggers a refetch, at most one per `min_refresh`, so a flood of tokens
/// with made-up `kid`s cannot hammer the identity provider.
pub struct Jwks {
    url: String,
    http: reqwest::Client,
    ttl: Duration,
    min_refresh: Duration,
    keys: std::sync::RwLock<(KeyMap, Option<Instant>)>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl Jwks {
    /// A key set at `url`.
    pub fn new(url: &str, ttl: Duration, min_refresh: Duration) -> Self {
        Self {
            url: url.to_owned(),
            http: crate::tls::client_builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            ttl,
            min_refresh,
            keys: std::sync::RwLock::new((HashMap::new(), None)),
            last_fetch: tokio::sync::Mutex::new(None),
        }
    }

    fn cached(&self, kid: &str) -> (Option<(DecodingKey, Algorithm)>, bool) {
        match self.keys.read() {
            Ok(guard) => {
                let fresh = guard.1.is_some_and(|at| at.elapsed() < self.ttl);
                (guard.0.get(kid).cloned(), fresh)
            }
            Err(_) => (None, false),
        }
    }

    /// The key and algorithm for `kid`, refetching when needed.
    pub async fn key(&self, kid: &str) -> Option<(DecodingKey, Algorithm)> {
        let (found, fresh) = self.cached(kid);
        if found.is_some() && fresh {
            return found;
        }
        {
            let mut last = self.last_fetch.lock().await;
            let (found_now, fresh_now) = self.cached(kid);
            if found_now.is_some() && fresh_now {
                return found_now;
            }
            if last.is_none_or(|at| at.elapsed() >= self.min_refresh) {
                *last = Some(Instant::now());
                if let Err(error) = self.fetch().await {
                    tracing::warn!(%error, url = %self.url, "JWKS fetch failed");
                    metrics::counter!("jwks_fetch_failures_total").increment(1);
                }
            }
        }
        // A stale key still verifies while the provider is unreachable.
        self.cached(kid).0.or(found)
    }

    async fn fetch(&self) -> anyhow::Result<()> {
        let set: jsonwebtoken::jwk::JwkSet = self
            .http
            .get(&self.url)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            let algorithm = match &jwk.algorithm {
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(ec)
                    if ec.curve == jsonwebtoken::jwk::EllipticCurve::P256 =>
                {
                    Algorithm::ES256
                }
                _ => continue,
            };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid, (key, algorithm));
            }
        }
        if let Ok(mut guard) = self.keys.write() {
            *guard = (keys, Some(Instant::now()));
        }
        Ok(())
    }
}

fn describe(error: &jsonwebtoken::errors::Error) -> &'static str {
    use jsonwebtoken::errors::ErrorKind;
    match error.kind() {
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet",
        ErrorKind::InvalidAudience => "the token is for another audience",
        ErrorKind::InvalidIssuer => "the token has the wrong issuer",
        ErrorKind::InvalidSignature => "the token signature is invalid",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => {
            "the token algorithm is not allowed"
        }
        ErrorKind::MissingRequiredClaim(_) => "the token lacks a required claim",
        _ => "the token is malformed",
    }
}

/// A scope a route requires, as a type: `Authorized<scope::InventoryRead>`.
pub trait RequiredScope {
    /// The pinned scope name.
    const NAME: &'static str;
}

/// Marker types for the pinned scopes.
pub mod scope {
    use super::RequiredScope;

    macro_rules! scopes {
        ($($ty:ident => $name:literal),* $(,)?) => {$(
            #[doc = concat!("The `", $name, "` scope.")]
            #[derive(Debug, Clone, Copy)]
            pub struct $ty;
            impl RequiredScope for $ty {
                const NAME: &'static str = $name;
            }
        )*};
    }

    scopes! {
        AvailabilityRead => "availability:read",
        ReservationsWrite => "reservations:write",
        InventoryRead => "inventory:read",
        InventoryWrite => "inventory:write",
        MasterWrite => "master:write",
        TransfersWrite => "transfers:write",
        TransfersApprove => "transfers:approve",
        ReturnsWrite => "returns:write",
        PosWrite => "pos:write",
        WmsWrite => "wms:write",
        OpsRead => "ops:read",
        OpsWrite => "ops:write",
        ErpRead => "erp:read",
        ErpWrite => "erp:write",
    }
}

/// A verified caller holding scope `S`. Rejects with 401 (no or bad token)
/// or 403 (scope missing).
#[derive(Debug, Clone)]
pub struct Authorized<S> {
    /// The caller.
    pub principal: Principal,
    _scope: PhantomData<S>,
}

impl<S> std::ops::Deref for Authorized<S> {
    type Target = Principal;
    fn deref(&self) -> &Principal {
        &self.principal
    }
}

impl<St: Send + Sync, S: RequiredScope> FromRequestParts<St> for Authorized<S> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &St) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        principal.require_scope(S::NAME)?;
        Ok(Self {
            principal,
            _scope: PhantomData,
        })
    }
}

impl<St: Send + Sync> FromRequestParts<St> for Principal {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &St) -> Result<Self, Self::Rejection> {
        if let Some(principal) = parts.extensions.get::<Principal>() {
            return Ok(principal.clone());
        }
        let Some(authenticator) = parts.extensions.get::<Arc<Authenticator>>().cloned() else {
            tracing::error!("no Authenticator layer on this router");
            return Err(Problem::internal());
        };
        let principal = authenticator.verify_header(parts).await?;
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

/// The `sub` (and `kid`) prefix of service tokens: `svc:<service>`.
pub const SERVICE_SUBJECT_PREFIX: &str = "svc:";

/// Mints tokens: channel and operator tokens signed with the configured
/// HS256 secret ([`TokenIssuer::mint`]), and service tokens signed with
/// this layer's own Ed25519 key ([`TokenIssuer::service_token`]).
#[derive(Clone)]
pub struct TokenIssuer {
    issuer: String,
    key: EncodingKey,
    /// This layer's name and service-token key.
    service_key: Option<(String, EncodingKey)>,
    service_ttl_seconds: u64,
    /// Service tokens minted recently (see [`TokenIssuer::service_token`]).
    minted: Arc<std::sync::Mutex<HashMap<String, (String, u64)>>>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// What a minted token says.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    /// Audience (one layer).
    pub audience: String,
    /// Subject.
    pub subject: String,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Optional location binding.
    pub locations: Option<Vec<String>>,
    /// End user behind a service token.
    pub on_behalf_of: Option<String>,
    /// Lifetime in seconds.
    pub ttl_seconds: u64,
}

impl TokenIssuer {
    /// An issuer from the auth settings.
    pub fn new(settings: &AuthSettings) -> Self {
        Self {
            issuer: settings.issuer.clone(),
            key: EncodingKey::from_secret(settings.hs256_secret.expose().as_bytes()),
            service_key: None,
            service_ttl_seconds: settings.service_token_ttl_seconds,
            minted: Arc::default(),
        }
    }

    /// Signs service tokens with this layer's key from `keys`.
    pub fn with_service_keys(mut self, keys: &ServiceKeys) -> Self {
        self.service_key = keys.signing.clone();
        self
    }

    /// Signs a token.
    pub fn mint(&self, request: &TokenRequest) -> anyhow::Result<String> {
        let claims = self.claims(request);
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.key,
        )?)
    }

    /// A short-lived token for `service` to call the layer `audience` with
    /// only `scopes`, for the end user `principal` (its subject is kept for
    /// audit and its location binding carried on, so the inner layer
    /// enforces it too).
    ///
    /// A token saying exactly the same is reused for the first half of its
    /// lifetime: minting one per call cost a signature here and a full
    /// verification in the inner layer, which remembers a token it has
    /// verified (see [`Authenticator::verify`]).
    pub fn service_token(
        &self,
        service: &str,
        audience: &str,
        scopes: &[&str],
        principal: Option<&Principal>,
    ) -> anyhow::Result<String> {
        let request = TokenRequest {
            audience: audience.to_owned(),
            subject: format!("svc:{service}"),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            locations: principal
                .and_then(|p| p.locations.as_ref())
                .map(|l| l.iter().cloned().collect()),
            on_behalf_of: principal.map(|p| p.actor().to_owned()),
            ttl_seconds: self.service_ttl_seconds,
        };
        // JSON keeps the parts apart whatever characters they hold.
        let key = serde_json::to_string(&(
            &request.audience,
            &request.subject,
            &request.scopes,
            &request.locations,
            &request.on_behalf_of,
        ))?;
        let now = unix_now();
        let mut minted = self
            .minted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((token, _)) = minted.get(&key).filter(|(_, until)| now < *until) {
            return Ok(token.clone());
        }
        let token = self.sign_service_token(service, &request)?;
        if minted.len() >= MINTED_MAX {
            minted.retain(|_, (_, until)| now < *until);
            if minted.len() >= MINTED_MAX {
                minted.clear();
            }
        }
        minted.insert(key, (token.clone(), now + self.service_ttl_seconds / 2));
        Ok(token)
    }
}

impl TokenIssuer {
    /// The claims a minted token carries.
    fn claims(&self, request: &TokenRequest) -> Claims {
        let now = unix_now();
        Claims {
            sub: request.subject.clone(),
            iss: self.issuer.clone(),
            aud: Audiences::One(request.audience.clone()),
            exp: now + request.ttl_seconds,
            iat: now,
            scope: request.scopes.join(" "),
            locations: request.locations.clone(),
            on_behalf_of: request.on_behalf_of.clone(),
            jti: Some(uuid::Uuid::new_v4().to_string()),
        }
    }

    /// Signs a service token (EdDSA, `kid` = `svc:<service>`) with this
    /// layer's key; refuses when the key is another layer's or missing.
    fn sign_service_token(&self, service: &str, request: &TokenRequest) -> anyhow::Result<String> {
        let Some((own, key)) = &self.service_key else {
            anyhow::bail!("no service key is loaded: {service} cannot call other layers");
        };
        anyhow::ensure!(own == service, "the key loaded is {own}'s, not {service}'s");
        let claims = self.claims(request);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(crate::service_keys::key_id(service));
        Ok(jsonwebtoken::encode(&header, &claims, key)?)
    }
}

/// Most service tokens kept for reuse (one per end user and scope set).
const MINTED_MAX: usize = 10_000;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
