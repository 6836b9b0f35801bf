//! The config file: the example is a tested artifact; errors name the key.

use std::path::Path;

use mpmirror::config::{Config, ConfigError, LogFormat, TokenSource};

const MINIMAL: &str =
    "data_dir = \"d\"\n[[account]]\nname = \"a\"\napp_id = \"wx1\"\napp_secret = \"s\"\n";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("/base"))
}

fn problem(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn the_example_config_parses_and_mentions_every_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app_secret"), "s3cret\n").unwrap();
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"))
        .unwrap()
        .replace(
            "/etc/mpmirror/app_secret",
            &dir.path().join("app_secret").display().to_string(),
        );
    let config = Config::parse(&text, dir.path()).unwrap();
    assert_eq!(config.limits.requests_per_second, 5.0);
    assert_eq!(config.limits.concurrent_downloads, 4);
    assert_eq!(config.limits.quota_reserve, 0.3);
    assert_eq!(
        config.accounts[0].token,
        TokenSource::Stable(mpmirror::secret::Secret::new("s3cret"))
    );
    assert!(config.metrics.is_some() && config.notify.is_some());
    let keys = [
        "data_dir",
        "log_format",
        "[limits]",
        "requests_per_second",
        "concurrent_downloads",
        "quota_reserve",
        "daily_budget",
        "[[account]]",
        "name",
        "app_id",
        "app_secret",
        "app_secret_file",
        "api_base",
        "token",
        "token_file",
        "[schedule]",
        "cron",
        "every",
        "timezone",
        "run_at_start",
        "jitter",
        "[health]",
        "max_age",
        "[metrics]",
        "listen",
        "[notify]",
        "webhook",
        "format",
    ];
    for key in keys {
        assert!(text.contains(key), "config.example.toml mentions {key}");
    }
}

#[test]
fn defaults_apply_and_relative_paths_follow_the_file() {
    let config = parse(MINIMAL).unwrap();
    assert_eq!(config.data_dir, Path::new("/base/d"));
    assert_eq!(config.log_format, LogFormat::Text);
    assert_eq!(config.accounts[0].api_base, "https://api.weixin.qq.com");
    assert!(matches!(config.accounts[0].token, TokenSource::Stable(_)));
    assert_eq!(config.limits.quota_reserve, 0.3);
}

#[test]
fn unknown_keys_and_bad_values_are_named() {
    assert!(problem(&format!("colour = 1\n{MINIMAL}")).contains("colour"));
    assert!(
        problem(&MINIMAL.replace("app_secret = \"s\"", "app_secret = \"s\"\nsecret = \"x\""))
            .contains("secret")
    );
    assert!(
        problem(&format!("{MINIMAL}[limits]\nquota_reserve = 1.5\n"))
            .contains("limits.quota_reserve")
    );
    assert!(
        problem(&format!("{MINIMAL}[limits]\nrequests_per_second = 0\n"))
            .contains("limits.requests_per_second")
    );
    assert!(
        problem(&format!(
            "{MINIMAL}[limits]\ndaily_budget = {{ get_everything = 1 }}\n"
        ))
        .contains("get_everything")
    );
    assert!(
        problem(&MINIMAL.replace("app_secret = \"s\"\n", "")).contains("account[0].app_secret")
    );
    assert!(
        problem(&MINIMAL.replace("name = \"a\"", "name = \"a b/c\"")).contains("account[0].name")
    );
    assert!(
        problem(&format!(
            "{MINIMAL}[[account]]\nname = \"a\"\napp_id = \"wx2\"\napp_secret = \"t\"\n"
        ))
        .contains("duplicate")
    );
    assert!(
        problem(&MINIMAL.replace(
            "app_id = \"wx1\"",
            "app_id = \"wx1\"\napi_base = \"ftp://x\""
        ))
        .contains("api_base")
    );
    assert!(problem(&format!("{MINIMAL}[schedule]\ncron = \"* * *\"\n")).contains("schedule.cron"));
    assert!(
        problem(&format!(
            "{MINIMAL}[schedule]\ncron = \"0 3 * * *\"\ntimezone = \"Mars/Base\"\n"
        ))
        .contains("Mars/Base")
    );
    assert!(
        problem(&format!(
            "{MINIMAL}[schedule]\ncron = \"0 3 * * *\"\nevery = \"1h\"\n"
        ))
        .contains("not both")
    );
    assert!(problem("log_format = \"json\"\n").contains("data_dir"));
}

#[test]
fn token_file_needs_no_secret_and_secrets_never_print() {
    let text =
        "data_dir = \"d\"\n[[account]]\nname = \"a\"\napp_id = \"wx1\"\ntoken_file = \"tok\"\n";
    let config = parse(text).unwrap();
    assert_eq!(
        config.accounts[0].token,
        TokenSource::File("/base/tok".into())
    );
    let config = parse(&MINIMAL.replace("\"s\"", "\"very-secret-value\"")).unwrap();
    let debug = format!("{config:?}");
    assert!(
        !debug.contains("very-secret-value"),
        "Debug redacts the secret: {debug}"
    );
    assert!(debug.contains("redacted"));
}

#[test]
fn app_secret_file_is_read_and_trimmed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "  from-file \n").unwrap();
    let text = MINIMAL.replace("app_secret = \"s\"", "app_secret_file = \"secret\"");
    let config = Config::parse(&text, dir.path()).unwrap();
    assert_eq!(
        config.accounts[0].token,
        TokenSource::Stable(mpmirror::secret::Secret::new("from-file"))
    );
    let err = Config::parse(&text, Path::new("/nonexistent"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/secret"), "{err}");
}
