//! The `/metrics` pages last rendered, while they are fresh: at capacity a render takes a
//! second or more, and scrapers in a loop would otherwise keep a core rendering.
use std::time::{Duration, Instant};

use axum::{
    body::Bytes,
    http::{header, HeaderValue, StatusCode},
    response::{IntoResponse as _, Response},
};

/// A rendered `/metrics` answers every scraper for `METRICS_REUSE` times as long as it took
/// to render (at least `METRICS_FRESH`), from the end of its render, if that took at least
/// `METRICS_SLOW`: at capacity a render reads every counter of the maps (a second and more at
/// 260 000 backends), and scrapers in a loop would otherwise keep a core rendering; a small
/// node renders afresh for each scrape.
const METRICS_FRESH: Duration = Duration::from_secs(1);
const METRICS_REUSE: u32 = 4;
const METRICS_SLOW: Duration = Duration::from_millis(10);

/// The last `/metrics` pages rendered, per format (Prometheus text, OpenMetrics) and encoding
/// (plain, gzip), while they are fresh, and the size of each.
#[derive(Default)]
pub(super) struct MetricsCache {
    pages: [Option<RenderedMetrics>; 4],
    sizes: [usize; 4],
}

/// What a scraper asked for.
#[derive(Clone, Copy)]
pub(super) struct Kind {
    pub openmetrics: bool,
    pub gzip: bool,
}

impl Kind {
    fn index(self) -> usize {
        usize::from(self.openmetrics) * 2 + usize::from(self.gzip)
    }
}

impl MetricsCache {
    /// The answer to a scrape of `kind`, if its last page is fresh.
    pub(super) fn fresh(&self, kind: Kind) -> Option<Response> {
        let last = self.pages[kind.index()].as_ref().filter(|last| last.fresh())?;
        Some(last.response(kind.gzip))
    }

    /// Drops every stale page before a render (at capacity a plain page is tens of
    /// megabytes); the size of the last page of `kind`.
    pub(super) fn make_room(&mut self, kind: Kind) -> usize {
        for page in &mut self.pages {
            page.take_if(|page| !page.fresh());
        }
        self.sizes[kind.index()]
    }

    /// Keeps `page`, of `kind`, rendered just now in `took`; the answer to its scrape.
    pub(super) fn keep(
        &mut self,
        kind: Kind,
        took: Duration,
        content_type: &'static str,
        page: Vec<u8>,
    ) -> Response {
        self.sizes[kind.index()] = page.len();
        let rendered =
            RenderedMetrics { at: Instant::now(), took, content_type, page: page.into() };
        self.pages[kind.index()].insert(rendered).response(kind.gzip)
    }
}

/// A rendered `/metrics`: when it was done, how long it took, its content type and its bytes.
struct RenderedMetrics {
    at: Instant,
    took: Duration,
    content_type: &'static str,
    page: Bytes,
}

impl RenderedMetrics {
    /// Whether it still answers every scraper (see `METRICS_FRESH`).
    fn fresh(&self) -> bool {
        self.took >= METRICS_SLOW
            && self.at.elapsed() < METRICS_FRESH.max(self.took * METRICS_REUSE)
    }

    /// The answer to a scrape, which shares the page.
    fn response(&self, gzip: bool) -> Response {
        let mut response = (StatusCode::OK, self.page.clone()).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(self.content_type));
        if gzip {
            headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        response
    }
}
