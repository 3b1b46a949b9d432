//! Tests of loading and checking the configuration.
use super::*;

#[test]
fn defaults_parse_and_pass_checks() {
    let settings = Settings::defaults();
    assert_eq!(settings.experience.port, 8080);
    assert_eq!(settings.process.port, 8081);
    assert_eq!(settings.system.port, 8082);
    assert_eq!(settings.profile, Profile::Development);
}

#[test]
fn production_refuses_the_dev_secret() {
    let mut settings = Settings::defaults();
    settings.profile = Profile::Production;
    let error = settings.check().expect_err("dev secret must be refused");
    assert!(error.to_string().contains("development signing secret"));
    settings.auth.hs256_secret = Secret::new(PUBLISHED_SECRETS[1]);
    assert!(settings.check().is_err(), "the old example's placeholder");
    settings.auth.hs256_secret = Secret::new(unpublished_secret());
    settings.check().expect("a real secret is accepted");
}

/// A secret made at run time: not in the repository.
fn unpublished_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

#[test]
fn a_published_secret_never_guards_a_listener_beyond_loopback() {
    let loopback: std::net::SocketAddr = "127.0.0.1:8080".parse().expect("addr");
    let v6_loopback: std::net::SocketAddr = "[::1]:8080".parse().expect("addr");
    let everywhere: std::net::SocketAddr = "0.0.0.0:8080".parse().expect("addr");
    let lan: std::net::SocketAddr = "192.0.2.7:8080".parse().expect("addr");
    let mut settings = Settings::defaults();
    // A newcomer's machine: the development default on loopback.
    settings.check_exposure(loopback).expect("loopback");
    settings.check_exposure(v6_loopback).expect("loopback");
    for profile in [Profile::Development, Profile::Production] {
        settings.profile = profile;
        for secret in PUBLISHED_SECRETS {
            settings.auth.hs256_secret = Secret::new(*secret);
            for addr in [everywhere, lan] {
                let error = settings.check_exposure(addr).expect_err("published");
                assert!(error.to_string().contains("beyond loopback"), "{error}");
            }
        }
    }
    settings.auth.hs256_secret = Secret::new("short");
    assert!(settings.check_exposure(everywhere).is_err());
    settings.auth.hs256_secret = Secret::new(unpublished_secret());
    settings
        .check_exposure(everywhere)
        .expect("a secret of its own");
    // Without HS256 the secret guards nothing.
    settings.auth.hs256_secret = Secret::new(DEV_SIGNING_SECRET);
    settings.auth.algorithms = vec!["ES256".into()];
    settings.auth.jwks_url = "https://idp.example/jwks.json".into();
    settings
        .check_exposure(everywhere)
        .expect("identity-provider tokens only");
}

#[test]
fn every_secret_the_repository_shows_is_known_as_published() {
    // Config files and docs a reader copies from: each `hs256_secret`
    // or `HS256_SECRET` value they show must be refused.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec![root.join("README.md"), root.join("Dockerfile")];
    for dir in ["config", "docs"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir)) {
            files.extend(entries.flatten().map(|e| e.path()));
        }
    }
    let mut found = 0;
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines() {
            let lower = line.to_ascii_lowercase();
            let Some(at) = lower.find("hs256_secret") else {
                continue;
            };
            // `hs256_secret = "VALUE"` (TOML) or `HS256_SECRET=VALUE` (env).
            let Some(rest) = line[at + "hs256_secret".len()..]
                .trim_start()
                .strip_prefix('=')
            else {
                continue;
            };
            let value = rest
                .trim_start()
                .trim_start_matches(['"', '\''])
                .split(['"', '\'', ' ', '`'])
                .next()
                .unwrap_or_default();
            if value.is_empty() {
                continue;
            }
            if value.starts_with('$') || value.starts_with('<') {
                continue;
            }
            found += 1;
            assert!(
                PUBLISHED_SECRETS.contains(&value),
                "{}: `{value}` is published but not in PUBLISHED_SECRETS",
                file.display()
            );
        }
    }
    assert!(found >= 1, "the default config's secret was not found");
}

#[test]
fn secrets_are_never_printed() {
    let settings = Settings::defaults();
    let printed = format!("{settings:?}");
    assert!(!printed.contains(DEV_SIGNING_SECRET));
    assert!(printed.contains("Secret(***)"));
}

#[test]
#[expect(
    clippy::result_large_err,
    reason = "figment's Jail API returns figment::Error"
)]
fn environment_overrides_file_which_overrides_defaults() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "override.toml",
            "[process]\nport = 9181\n[system]\nport = 9182\n",
        )?;
        jail.set_env("RETAIL_SYSTEM__PORT", "9999");
        jail.set_env("RETAIL_ERP__TRYTON__DATABASE", "erp_test");
        let settings =
            Settings::load(Some(Path::new("override.toml"))).map_err(|e| e.to_string())?;
        assert_eq!(settings.process.port, 9181);
        assert_eq!(settings.system.port, 9999);
        assert_eq!(settings.experience.port, 8080);
        assert_eq!(settings.erp.tryton.database, "erp_test");
        Ok(())
    });
}

#[test]
fn the_production_example_parses_and_passes_the_checks() {
    let figment = Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string(include_str!(
        "../../config/production.example.toml"
    )));
    let settings = Settings::from_figment(figment).expect("valid production example");
    assert_eq!(settings.profile, Profile::Production);
    assert!(settings.redis_url().is_some());
    settings
        .check_exposure("0.0.0.0:8080".parse().expect("addr"))
        .expect("the example listens everywhere on identity-provider tokens");
}

#[test]
fn unsupported_algorithms_and_an_empty_issuer_are_refused() {
    let mut settings = Settings::defaults();
    settings.auth.algorithms = vec!["RS256".into()];
    assert!(settings.check().is_err(), "RS256 without a JWKS URL");
    settings.auth.jwks_url = "http://idp.example/jwks.json".into();
    assert!(settings.check().is_ok());
    settings.auth.algorithms = vec!["HS512".into()];
    assert!(settings.check().is_err());
    let mut settings = Settings::defaults();
    settings.auth.issuer = " ".into();
    assert!(settings.check().is_err());
}

#[test]
fn unknown_keys_are_rejected() {
    let figment =
        Figment::from(Toml::string(DEFAULT_TOML)).merge(Toml::string("[process]\nprot = 1\n"));
    assert!(Settings::from_figment(figment).is_err());
}
