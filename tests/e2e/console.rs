//! The operations console in a real browser: headless Chromium driven over
//! the W3C WebDriver protocol (chromedriver), against the running platform.
//! Runs when `TEST_CHROMEDRIVER` names a chromedriver binary (CI installs
//! Debian's `chromium` and `chromium-driver`); says that it skips otherwise.
//! The final screen is saved as `target/console-e2e.png`.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use crate::helpers::{Layer, TestApp};

/// The WebDriver element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

fn chromedriver() -> Option<String> {
    match std::env::var("TEST_CHROMEDRIVER") {
        Ok(path) if !path.is_empty() => Some(path),
        _ => {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "note: the console browser test skips: TEST_CHROMEDRIVER is not set"
            );
            None
        }
    }
}

struct Driver {
    http: reqwest::Client,
    base: String,
    session: String,
    process: Child,
}

impl Driver {
    async fn start(binary: &str) -> Self {
        let port = {
            let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
            socket.local_addr().expect("addr").port()
        };
        // Its own process group: dropping the driver ends the browser it
        // started too, even when a failed test never closed the session.
        let process = Command::new(binary)
            .arg(format!("--port={port}"))
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        loop {
            if let Ok(response) = http.get(format!("{base}/status")).send().await
                && response.status().is_success()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not come up"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut options = json!({
            "args": ["--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-dev-shm-usage",
                "--window-size=1280,900"]
        });
        if let Ok(chromium) = std::env::var("TEST_CHROMIUM") {
            options["binary"] = json!(chromium);
        }
        let created: Value = http
            .post(format!("{base}/session"))
            .json(&json!({"capabilities": {"alwaysMatch": {
                "browserName": "chrome", "goog:chromeOptions": options}}}))
            .send()
            .await
            .expect("session request")
            .json()
            .await
            .expect("session json");
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no browser session: {created}"))
            .to_owned();
        Self {
            http,
            base,
            session,
            process,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let answer: Value = request
            .send()
            .await
            .expect("webdriver call")
            .json()
            .await
            .expect("webdriver json");
        answer["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.call(Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Elements matching a CSS selector (possibly none).
    async fn all(&self, css: &str) -> Vec<String> {
        let found = self
            .call(
                Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits for an element to exist.
    async fn wait(&self, css: &str, limit: Duration) -> String {
        let started = Instant::now();
        loop {
            if let Some(first) = self.all(css).await.into_iter().next() {
                return first;
            }
            if started.elapsed() > limit {
                self.screenshot("console-e2e-failure.png").await;
                panic!("`{css}` did not appear in {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for no element to match.
    async fn wait_gone(&self, css: &str, limit: Duration) {
        let started = Instant::now();
        while !self.all(css).await.is_empty() {
            if started.elapsed() > limit {
                self.screenshot("console-e2e-failure.png").await;
                panic!("`{css}` did not disappear in {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn text(&self, element: &str) -> String {
        self.call(Method::GET, &format!("/element/{element}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    async fn click(&self, element: &str) {
        let answer = self
            .call(
                Method::POST,
                &format!("/element/{element}/click"),
                Some(json!({})),
            )
            .await;
        assert!(answer.is_null(), "click failed: {answer}");
    }

    async fn type_into(&self, element: &str, text: &str) {
        self.call(
            Method::POST,
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    /// Saves the page as a PNG under `target/`.
    async fn screenshot(&self, name: &str) -> std::path::PathBuf {
        use base64::Engine;
        let data = self.call(Method::GET, "/screenshot", None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .expect("base64 screenshot");
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&dir).expect("target dir");
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("screenshot written");
        path
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.process.id())])
            .status();
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[tokio::test]
async fn an_operator_replays_a_dead_letter_from_the_console() {
    let Some(binary) = chromedriver() else {
        return;
    };
    let app = TestApp::spawn_with(crate::erp::quick_pipeline).await;

    // A posting the ERP refuses outright: a dead letter at once.
    crate::erp::set_faults(&app, json!({"reject_skus": ["SKU-000003"]})).await;
    crate::feed::ingest(
        &app,
        vec![crate::feed::receipt(
            "console-dead-1",
            "S002",
            "SKU-000003",
            7,
        )],
    )
    .await;
    let health = crate::erp::wait_for(&app, Duration::from_secs(30), "a dead letter", |h| {
        h["postings"]["dead"] == 1
    })
    .await;
    assert!(
        health["impact"]["summary"].as_array().is_some_and(|s| s
            .iter()
            .any(|l| l.as_str().unwrap_or_default().contains("dead"))),
        "{}",
        health["impact"]
    );
    let dead: Value = app
        .get(
            Layer::Process,
            "/v1/ops/postings?status=dead",
            Some(&app.token(Layer::Process, "ops:read")),
        )
        .await
        .json()
        .await
        .expect("json");
    let posting_id = dead["postings"][0]["posting_id"]
        .as_i64()
        .expect("posting id");

    let driver = Driver::start(&binary).await;
    let console = app.url(Layer::Process, "/console");
    driver.goto(&console).await;

    // A token without ops:read is turned away with the reason.
    let field = driver.wait("#token", Duration::from_secs(10)).await;
    driver
        .type_into(&field, &app.token(Layer::Process, "inventory:read"))
        .await;
    driver
        .click(&driver.wait("#login", Duration::from_secs(5)).await)
        .await;
    let error = driver.wait("#login-error", Duration::from_secs(5)).await;
    let started = Instant::now();
    while !driver.text(&error).await.contains("ops:read") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no login error shown"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // An operator signs in and sees the dead letter, live.
    driver.goto(&console).await;
    let field = driver.wait("#token", Duration::from_secs(10)).await;
    let operator = app.token(Layer::Process, "ops:read ops:write inventory:read");
    driver.type_into(&field, &operator).await;
    driver
        .click(&driver.wait("#login", Duration::from_secs(5)).await)
        .await;
    let row = format!("tr[data-posting-id=\"{posting_id}\"]");
    driver.wait(&row, Duration::from_secs(15)).await;
    let live = driver.wait("#live-status", Duration::from_secs(5)).await;
    let started = Instant::now();
    while driver.text(&live).await != "live" {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "health stream not live"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let impact = driver.wait("#impact-summary", Duration::from_secs(5)).await;
    assert!(
        driver.text(&impact).await.contains("dead"),
        "the impact names the dead letter"
    );

    // The ERP accepts the product again; the operator replays the letter.
    crate::erp::set_faults(&app, json!({})).await;
    let replay = driver
        .wait(&format!("{row} button.replay"), Duration::from_secs(5))
        .await;
    driver.click(&replay).await;
    driver.wait_gone(&row, Duration::from_secs(15)).await;

    // The sku drill-down: positions across locations and the journal,
    // then a change arriving live.
    let input = driver.wait("#sku-input", Duration::from_secs(5)).await;
    driver.type_into(&input, "SKU-000003").await;
    driver
        .click(&driver.wait("#sku-go", Duration::from_secs(5)).await)
        .await;
    let s002 = driver
        .wait(
            "#positions-body tr[data-location-id=\"S002\"]",
            Duration::from_secs(10),
        )
        .await;
    assert!(driver.text(&s002).await.contains('7'), "on_hand 7 at S002");
    driver
        .wait("#journal-body tr[data-seq]", Duration::from_secs(10))
        .await;
    crate::feed::ingest(
        &app,
        vec![crate::feed::receipt(
            "console-live-1",
            "S001",
            "SKU-000003",
            5,
        )],
    )
    .await;
    driver
        .wait(
            "#positions-body tr[data-location-id=\"S001\"]",
            Duration::from_secs(10),
        )
        .await;
    let counter = driver.wait("#live-changes", Duration::from_secs(5)).await;
    let started = Instant::now();
    while !driver.text(&counter).await.starts_with('1') {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no live change counted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let shot = driver.screenshot("console-e2e.png").await;
    eprintln!("console screenshot: {}", shot.display());

    // And the platform agrees: the posting went through.
    crate::erp::wait_for(&app, Duration::from_secs(30), "the replayed posting", |h| {
        h["postings"]["dead"] == 0
            && h["postings"]["pending"] == 0
            && h["postings"]["in_flight"] == 0
    })
    .await;
    let _ = driver.call(Method::DELETE, "", None).await;
}
