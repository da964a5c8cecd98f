//! The HTTP API: routes, JSON bodies, and the status code of every refusal.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use paragen_adaptive::{Budget, RouteError, Tier};
use serde::{Deserialize, Serialize};

use crate::engine::{Refusal, Shared};

/// Bounds on what one request may ask.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_texts: usize,
    pub max_text_chars: usize,
    /// Longest a request may wait for its answer before a 504.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_texts: 256,
            max_text_chars: 4000,
            timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Clone)]
struct AppState {
    shared: Arc<Shared>,
    limits: Limits,
}

/// `POST /v1/translate`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TranslateRequest {
    pub text: Option<String>,
    pub texts: Option<Vec<String>>,
    /// A document: split into sentences, translated, joined with spaces.
    pub document: Option<String>,
    pub budget_ms: Option<f64>,
    pub min_bleu: Option<f64>,
    pub tier: Option<Tier>,
    pub variant: Option<String>,
}

/// The answer of `POST /v1/translate`.
#[derive(Debug, Serialize, Deserialize)]
pub struct TranslateResponse {
    /// Present when the request gave `text` (its translation) or `document` (the
    /// translations of its sentences, joined).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub translation: Option<String>,
    /// One per input text, in order (blank texts give blank translations).
    pub translations: Vec<String>,
    pub variant: String,
    /// The variant's BLEU on the valid split.
    pub bleu: f64,
    pub queue_ms: f64,
    pub compute_ms: f64,
    /// The router's prediction of queue plus compute.
    pub predicted_ms: f64,
    /// Sentences in the batch this request was decoded in.
    pub batch_sentences: usize,
}

/// One entry of `GET /v1/variants`.
#[derive(Debug, Serialize, Deserialize)]
pub struct VariantEntry {
    pub name: String,
    pub decoding: String,
    pub kind: String,
    pub bleu: f64,
    pub chrf: f64,
    pub valid_sentences: usize,
    pub params: usize,
    pub file_bytes: u64,
    /// Predicted milliseconds for one sentence of 25 tokens.
    pub ms_one_sentence: f64,
    /// Predicted milliseconds per sentence in a batch of `batch` sentences of 25 tokens.
    pub ms_per_sentence_batched: f64,
    pub batch: usize,
    pub latency: paragen_adaptive::LatencyTable,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct VariantsResponse {
    pub default_budget_ms: f64,
    pub variants: Vec<VariantEntry>,
}

/// A refusal: its status, its message, and for overload when to retry.
pub struct ApiError {
    status: StatusCode,
    message: String,
    retry_after_s: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            retry_after_s: None,
        }
    }

    fn reason(&self) -> &'static str {
        match self.status {
            StatusCode::BAD_REQUEST => "bad_request",
            StatusCode::NOT_FOUND => "unknown_variant",
            StatusCode::PAYLOAD_TOO_LARGE => "too_large",
            StatusCode::UNPROCESSABLE_ENTITY => "unreachable",
            StatusCode::SERVICE_UNAVAILABLE => "overloaded",
            StatusCode::GATEWAY_TIMEOUT => "timeout",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "not_json",
            _ => "error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message }));
        let mut response = (self.status, body).into_response();
        if let Some(seconds) = self.retry_after_s {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        let message = refusal.to_string();
        let (status, retry_after_s) = match &refusal {
            Refusal::Route(RouteError::UnknownVariant { .. }) => (StatusCode::NOT_FOUND, None),
            Refusal::Route(
                RouteError::QualityUnreachable { .. } | RouteError::BudgetUnreachable { .. },
            ) => (StatusCode::UNPROCESSABLE_ENTITY, None),
            Refusal::Route(RouteError::Overloaded { retry_after_ms, .. }) => (
                StatusCode::SERVICE_UNAVAILABLE,
                Some((retry_after_ms / 1000.0).ceil().max(1.0) as u64),
            ),
            Refusal::Full(_) | Refusal::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, Some(1)),
            Refusal::TooLong { .. } => (StatusCode::PAYLOAD_TOO_LARGE, None),
        };
        Self {
            status,
            message,
            retry_after_s,
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = match rejection.status() {
        StatusCode::PAYLOAD_TOO_LARGE => StatusCode::PAYLOAD_TOO_LARGE,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        _ => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, rejection.body_text())
}

/// The budget of a request, its values checked.
fn budget_of(request: &TranslateRequest) -> Result<Budget, ApiError> {
    let bad = |field: &str, value: f64| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("{field} must be a positive number, not {value}"),
        )
    };
    if let Some(ms) = request.budget_ms
        && !(ms.is_finite() && ms > 0.0)
    {
        return Err(bad("budget_ms", ms));
    }
    if let Some(bleu) = request.min_bleu
        && !(bleu.is_finite() && bleu >= 0.0)
    {
        return Err(bad("min_bleu", bleu));
    }
    Ok(Budget {
        max_ms: request.budget_ms,
        min_bleu: request.min_bleu,
        tier: request.tier,
        variant: request.variant.clone(),
    })
}

/// The texts of a request, checked against the limits.
fn texts_of(request: &TranslateRequest, limits: &Limits) -> Result<Vec<String>, ApiError> {
    let texts = match (&request.text, &request.texts, &request.document) {
        (Some(text), None, None) => vec![text.clone()],
        (None, Some(texts), None) => texts.clone(),
        (None, None, Some(document)) => paragen_adaptive::parallel::split_sentences(document),
        (None, None, None) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "give `text` (a string), `texts` (a list of strings) or `document` (a text \
                 to split into sentences)",
            ));
        }
        _ => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "give one of `text`, `texts` and `document`",
            ));
        }
    };
    if texts.len() > limits.max_texts {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} texts in one request; the limit is {}",
                texts.len(),
                limits.max_texts
            ),
        ));
    }
    if let Some((i, t)) = texts
        .iter()
        .enumerate()
        .find(|(_, t)| t.chars().count() > limits.max_text_chars)
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "text {i} has {} characters; the limit is {}",
                t.chars().count(),
                limits.max_text_chars
            ),
        ));
    }
    if texts.iter().all(|t| t.trim().is_empty()) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "nothing to translate: every text is blank",
        ));
    }
    Ok(texts)
}

async fn translate(
    State(state): State<AppState>,
    body: Result<Json<TranslateRequest>, JsonRejection>,
) -> Response {
    let outcome = translate_inner(&state, body).await;
    let metrics = &state.shared.metrics;
    match outcome {
        Ok(response) => {
            metrics.answered(200);
            response.into_response()
        }
        Err(error) => {
            metrics.answered(error.status.as_u16());
            metrics.rejected(error.reason());
            error.into_response()
        }
    }
}

async fn translate_inner(
    state: &AppState,
    body: Result<Json<TranslateRequest>, JsonRejection>,
) -> Result<Json<TranslateResponse>, ApiError> {
    let Json(request) = body.map_err(json_rejection)?;
    let budget = budget_of(&request)?;
    let texts = texts_of(&request, &state.limits)?;
    let started = Instant::now();
    let non_blank: Vec<String> = texts
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    let (decision, receiver) = state.shared.admit(&budget, non_blank)?;
    let profile = &state.shared.variants[decision.variant].profile;
    state.shared.metrics.chose(&profile.name);
    let answer = match tokio::time::timeout(state.limits.timeout, receiver).await {
        Err(_) => {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "no answer within {} s; the request was dropped",
                    state.limits.timeout.as_secs_f64()
                ),
            ));
        }
        Ok(Err(_)) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server stopped before answering",
            ));
        }
        Ok(Ok(Err(e))) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)),
        Ok(Ok(Ok(answer))) => answer,
    };
    state
        .shared
        .metrics
        .translated(started.elapsed().as_secs_f64());
    let mut outputs = answer.translations.into_iter();
    let translations: Vec<String> = texts
        .iter()
        .map(|t| match t.trim().is_empty() {
            true => String::new(),
            false => outputs.next().unwrap_or_default(),
        })
        .collect();
    Ok(Json(TranslateResponse {
        translation: match (&request.text, &request.document) {
            (Some(_), _) => Some(translations[0].clone()),
            (_, Some(_)) => Some(translations.join(" ")),
            _ => None,
        },
        translations,
        variant: profile.name.clone(),
        bleu: profile.bleu,
        queue_ms: answer.queue_ms,
        compute_ms: answer.compute_ms,
        predicted_ms: decision.predicted_ms,
        batch_sentences: answer.batch_sentences,
    }))
}

async fn variants(State(state): State<AppState>) -> Json<VariantsResponse> {
    let shared = &state.shared;
    let variants = shared
        .variants
        .iter()
        .map(|v| {
            let p = &v.profile;
            let batch = p.latency.efficient_batch();
            VariantEntry {
                name: p.name.clone(),
                decoding: p.decoding.clone(),
                kind: p.kind.clone(),
                bleu: p.bleu,
                chrf: p.chrf,
                valid_sentences: p.valid_sentences,
                params: p.params,
                file_bytes: p.file_bytes,
                ms_one_sentence: p.latency.predict_ms(1, 25),
                ms_per_sentence_batched: p.latency.predict_ms(batch, 25) / batch as f64,
                batch,
                latency: p.latency.clone(),
            }
        })
        .collect();
    Json(VariantsResponse {
        default_budget_ms: shared.router.default_budget_ms(),
        variants,
    })
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let (waiting, queued_ms) = state.shared.load();
    Json(serde_json::json!({
        "status": "ok",
        "variants": state.shared.variants.len(),
        "queue_sentences": waiting,
        "queued_ms": queued_ms,
    }))
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.shared.metrics.render(),
    )
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no such route; the API is POST /v1/translate, GET /v1/variants, GET /health, \
         GET /metrics and GET /",
    )
}

/// The server's routes over `shared`.
pub fn app(shared: Arc<Shared>, limits: Limits) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/v1/translate", post(translate))
        .route("/v1/variants", get(variants))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .with_state(AppState { shared, limits })
}
