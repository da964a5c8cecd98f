//! The real server on an ephemeral port, with real (tiny, untrained) models of two kinds
//! and the shipped valid split, spoken to over HTTP.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use paragen_adaptive::ProfileSettings;
use paragen_adaptive::profile::Machine;
use paragen_data::{PreparedData, Split, Tokenizer};
use paragen_infer::{ModelConfig, ModelKind, RunConfig, RunDir, TrainingJson};
use paragen_models::TransformerConfig;
use paragen_models::nat::NatConfig;
use paragen_serve::{Limits, ServeOptions, TranslateResponse, VariantsResponse, serve};
use serde_json::{Value, json};

type B = paragen_backend::TestBackend;

fn shipped_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/distilled")
}

/// A run directory of a freshly initialised tiny model of `kind`.
fn tiny_run(dir: &Path, kind: ModelKind, tokenizer: &Tokenizer) {
    let shapes = TransformerConfig::tiny(tokenizer.vocab_size(), tokenizer.special());
    let model = match kind {
        ModelKind::NatCtc => ModelConfig::Nat(NatConfig::ctc(shapes, 2)),
        _ => ModelConfig::Ar(shapes),
    };
    let files = RunDir::new(dir);
    std::fs::create_dir_all(dir).unwrap();
    files
        .save_config(&RunConfig {
            kind,
            preset: "tiny".into(),
            model: model.clone(),
            data_dir: shipped_data(),
            paragen_version: env!("CARGO_PKG_VERSION").into(),
            training: TrainingJson::new(),
        })
        .unwrap();
    files.save_tokenizer(tokenizer).unwrap();
    match paragen_infer::Model::<B>::new(&model, &Default::default()).unwrap() {
        paragen_infer::Model::Ar(m) => files.save_module::<B, _>("model.mpk", &m).unwrap(),
        paragen_infer::Model::Nat(m) => files.save_module::<B, _>("model.mpk", &m).unwrap(),
    }
}

struct Server {
    address: SocketAddr,
    stop: Arc<tokio::sync::Notify>,
    thread: Option<std::thread::JoinHandle<Result<(), paragen_serve::ServeError>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(max_waiting: usize) -> Self {
        Self::start_with(max_waiting, Duration::from_secs(60))
    }

    fn start_with(max_waiting: usize, timeout: Duration) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let valid = PreparedData::new(shipped_data())
            .pairs(Split::Valid)
            .unwrap();
        let text: Vec<&str> = valid
            .iter()
            .flat_map(|p| [p.src.as_str(), p.tgt.as_str()])
            .collect();
        let tokenizer = Tokenizer::train(text.into_iter(), 300).unwrap();
        let models = dir.path().join("models");
        tiny_run(&models.join("ar"), ModelKind::Ar, &tokenizer);
        tiny_run(&models.join("ctc"), ModelKind::NatCtc, &tokenizer);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let stop = Arc::new(tokio::sync::Notify::new());
        let options = ServeOptions {
            models,
            variants: Vec::new(),
            data: shipped_data(),
            profile: ProfileSettings {
                quality_sentences: 8,
                batches: vec![1, 4],
                lengths: vec![5, 20],
                runs: 1,
            },
            remeasure: false,
            machine: Machine {
                cpu: "test".into(),
                backend: "ndarray".into(),
                threads: 1,
            },
            default_budget_ms: 10_000.0,
            max_wait: Duration::from_millis(2),
            max_waiting,
            workers: 2,
            limits: Limits {
                max_body_bytes: 4096,
                max_texts: 8,
                max_text_chars: 300,
                timeout,
            },
            listener,
            stop: stop.clone(),
        };
        let thread = std::thread::spawn(move || serve::<B>(options, &Default::default()));
        let server = Self {
            address,
            stop,
            thread: Some(thread),
            _dir: dir,
        };
        // Loading and profiling come first; the listener queues connections meanwhile.
        let health = Self::agent().get(&server.url("/health")).call();
        if health.is_err() {
            let mut server = server;
            let failed = server.thread.take().unwrap().join().unwrap();
            panic!("the server did not start: {failed:?}");
        }
        server
    }

    fn agent() -> ureq::Agent {
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(120))
            .build()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    fn get(&self, path: &str) -> (u16, String) {
        respond(Self::agent().get(&self.url(path)).call())
    }

    fn post(&self, body: &str) -> (u16, String, Option<String>) {
        post_to(self.address, body)
    }

    fn translate(&self, body: Value) -> TranslateResponse {
        let (status, text, _) = self.post(&body.to_string());
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap()
    }

    fn stop(mut self) {
        self.stop.notify_one();
        let thread = self.thread.take().unwrap();
        thread.join().unwrap().unwrap();
    }
}

fn post_to(address: SocketAddr, body: &str) -> (u16, String, Option<String>) {
    let response = Server::agent()
        .post(&format!("http://{address}/v1/translate"))
        .set("Content-Type", "application/json")
        .send_string(body);
    let retry = match &response {
        Err(ureq::Error::Status(_, r)) => r.header("Retry-After").map(str::to_string),
        _ => None,
    };
    let (status, text) = respond(response);
    (status, text, retry)
}

fn respond(response: Result<ureq::Response, ureq::Error>) -> (u16, String) {
    match response {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(status, r)) => (status, r.into_string().unwrap()),
        Err(e) => panic!("no HTTP answer: {e}"),
    }
}

fn error_of(text: &str) -> String {
    let body: Value = serde_json::from_str(text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    body["error"].as_str().unwrap().to_string()
}

#[test]
fn translates_routes_and_refuses_bad_requests_with_their_reason() {
    let server = Server::start(256);
    let (status, body) = server.get("/v1/variants");
    assert_eq!(status, 200);
    let variants: VariantsResponse = serde_json::from_str(&body).unwrap();
    let names: Vec<&str> = variants.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["ar/greedy", "ar/beam4", "ctc/one-pass"]);
    assert!(variants.variants.iter().all(|v| v.ms_one_sentence > 0.0));

    let one = server.translate(json!({ "text": "God is love." }));
    assert!(names.contains(&one.variant.as_str()));
    assert_eq!(one.translations.len(), 1);
    assert_eq!(
        one.translation.as_deref(),
        Some(one.translations[0].as_str())
    );

    let many = server.translate(
        json!({ "texts": ["In the beginning.", "  ", "Light."], "variant": "ctc/one-pass" }),
    );
    assert_eq!(many.variant, "ctc/one-pass");
    assert_eq!(many.translations.len(), 3);
    assert_eq!(many.translations[1], "");
    assert!(many.batch_sentences >= 2);

    let document = server.translate(
        json!({ "document": "In the beginning. Light!\nDarkness.", "variant": "ar/greedy" }),
    );
    assert_eq!(document.translations.len(), 3);
    assert_eq!(
        document.translation.unwrap(),
        document.translations.join(" ")
    );

    // The fast tier takes the variant predicted fastest.
    let fastest = variants
        .variants
        .iter()
        .min_by(|a, b| a.ms_one_sentence.total_cmp(&b.ms_one_sentence))
        .unwrap();
    let fast = server.translate(json!({ "text": "Light.", "tier": "fast" }));
    assert_eq!(fast.variant, fastest.name);

    for (body, status, says) in [
        ("{\"text\": ", 400, "EOF"),
        ("{\"txt\": \"a\"}", 400, "unknown field `txt`"),
        ("{}", 400, "give `text`"),
        ("{\"text\": \"a\", \"document\": \"b\"}", 400, "give one of"),
        ("{\"text\": \"  \"}", 400, "every text is blank"),
        (
            "{\"text\": \"a\", \"budget_ms\": -1}",
            400,
            "budget_ms must be a positive number",
        ),
        (
            "{\"text\": \"a\", \"tier\": \"cheap\"}",
            400,
            "unknown variant `cheap`",
        ),
        (
            "{\"text\": \"a\", \"variant\": \"x/beam9\"}",
            404,
            "ar/beam4",
        ),
        (
            "{\"text\": \"a\", \"min_bleu\": 99}",
            422,
            "no variant reaches BLEU 99",
        ),
        (
            "{\"text\": \"a\", \"budget_ms\": 0.0001}",
            422,
            "even on an idle server",
        ),
        (
            "{\"texts\": [\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\",\"a\"]}",
            413,
            "the limit is 8",
        ),
    ] {
        let (got, text, _) = server.post(body);
        assert_eq!(got, status, "{body}: {text}");
        assert!(error_of(&text).contains(says), "{body}: {text}");
    }
    let huge = json!({ "text": "word ".repeat(2000) }).to_string();
    let (got, text, _) = server.post(&huge);
    assert_eq!(got, 413, "{text}");
    let (got, text) = server.get("/v2/nothing");
    assert_eq!(got, 404);
    assert!(error_of(&text).contains("POST /v1/translate"));

    let (_, page) = server.get("/");
    assert!(page.contains("<textarea") && page.contains("/v1/variants"));
    let (_, health) = server.get("/health");
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    let (_, metrics) = server.get("/metrics");
    assert!(
        metrics.contains("paragen_requests_total{status=\"200\"} 4"),
        "{metrics}"
    );
    assert!(metrics.contains("paragen_variant_choices_total{variant=\"ctc/one-pass\"}"));
    assert!(metrics.contains("paragen_rejections_total{reason=\"too_large\"} 2"));
    assert!(metrics.contains("paragen_rejections_total{reason=\"bad_request\"} 7"));
    server.stop();
}

#[test]
fn overload_is_refused_with_retry_after_and_a_stop_answers_what_is_in_flight() {
    // At most two sentences may wait: concurrent requests of two overflow it.
    let server = Arc::new(Server::start(2));
    let clients = 24;
    let start = Arc::new(Barrier::new(clients));
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let (server, start) = (server.clone(), start.clone());
            std::thread::spawn(move || {
                let body = json!({ "texts": [format!("Sentence number {i} of the load."), "And light."], "variant": "ar/beam4" });
                start.wait();
                server.post(&body.to_string())
            })
        })
        .collect();
    let outcomes: Vec<(u16, String, Option<String>)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = outcomes.iter().filter(|o| o.0 == 200).count();
    let refused: Vec<_> = outcomes.iter().filter(|o| o.0 == 503).collect();
    assert_eq!(ok + refused.len(), clients, "only 200 or 503: {outcomes:?}");
    assert!(
        ok >= 1 && !refused.is_empty(),
        "{ok} answered, {} refused",
        refused.len()
    );
    for (_, text, retry) in &refused {
        assert!(error_of(text).contains("queue is full"), "{text}");
        assert_eq!(retry.as_deref(), Some("1"));
    }
    // A request in flight when the server is told to stop is still answered.
    let in_flight = {
        let address = server.address;
        std::thread::spawn(move || {
            let texts =
                vec!["A long sentence to decode with the beam, word after word, until the end."; 8];
            post_to(
                address,
                &json!({ "texts": texts, "variant": "ar/beam4" }).to_string(),
            )
        })
    };
    std::thread::sleep(Duration::from_millis(150));
    let server = Arc::into_inner(server).expect("the clients are done");
    let (stop, address) = (server.stop.clone(), server.address);
    stop.notify_one();
    let (status, text, _) = in_flight.join().unwrap();
    assert_eq!(status, 200, "{text}");
    server.stop_joined();
    assert!(
        std::net::TcpStream::connect(address).is_err(),
        "still listening"
    );
}

impl Server {
    /// Waits for a server already told to stop.
    fn stop_joined(mut self) {
        let thread = self.thread.take().unwrap();
        thread.join().unwrap().unwrap();
    }
}

/// Chromium, for the page's end-to-end test: `.ci/run` installs it and sets
/// `PARAGEN_REQUIRE_BROWSER`, which turns its absence into a failure.
fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|path| path.is_file())
            })
        });
    if found.is_none() {
        assert!(
            std::env::var_os("PARAGEN_REQUIRE_BROWSER").is_none(),
            "PARAGEN_REQUIRE_BROWSER is set and no chromium is on PATH"
        );
        eprintln!("no chromium on PATH: the page's browser test is skipped");
    }
    found
}

#[test]
fn the_page_translates_in_a_headless_browser() {
    let Some(browser) = chromium() else { return };
    let server = Server::start(256);
    let url = server.url("/?text=God%20is%20love.&variant=ctc/one-pass");
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=20000",
            "--dump-dom",
            &url,
        ])
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<p id=\"meta\">ctc/one-pass (valid BLEU"),
        "no translation on the page: {dom}"
    );
    // The live variant table is filled from GET /v1/variants.
    assert!(dom.contains("<td>ar/beam4</td>"), "{dom}");
    server.stop();
}

#[test]
fn a_request_not_answered_in_time_gets_a_504_and_the_server_goes_on() {
    let server = Server::start_with(256, Duration::from_millis(1));
    let texts = vec!["A long sentence to decode with the beam, word after word, until the end."; 8];
    let (status, text, _) =
        server.post(&json!({ "texts": texts, "variant": "ar/beam4" }).to_string());
    assert_eq!(status, 504, "{text}");
    assert!(
        error_of(&text).contains("no answer within 0.001 s"),
        "{text}"
    );
    let (_, health) = server.get("/health");
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    server.stop();
}
