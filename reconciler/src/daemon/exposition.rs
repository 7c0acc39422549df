//! How a `/metrics` page is written: OpenMetrics as prometheus-client encodes it, or the
//! Prometheus text format converted from it a line at a time; gzipped as it is written for
//! a scraper that accepts it (Prometheus does), so that at capacity (tens of megabytes of
//! text) the page is never held whole, only its tenth that gzip leaves.
use std::{
    fmt,
    io::{self, BufWriter, Write as _},
};

use flate2::{write::GzEncoder, Compression};

/// Where a page is written.
pub(super) enum Sink {
    Plain(Vec<u8>),
    /// Buffered: the encoder hands over a few bytes at a time, and each write to gzip costs.
    /// (Boxed: one per page, and far larger than a Vec.)
    Gzip(Box<BufWriter<GzEncoder<Vec<u8>>>>),
}

impl Sink {
    /// A sink, gzip or not, with room for `size_hint` bytes (the last page's size).
    pub(super) fn new(gzip: bool, size_hint: usize) -> Self {
        let room = size_hint + size_hint / 16;
        if gzip {
            let encoder = GzEncoder::new(Vec::with_capacity(room), Compression::fast());
            Sink::Gzip(Box::new(BufWriter::with_capacity(64 * 1024, encoder)))
        } else {
            Sink::Plain(Vec::with_capacity(room))
        }
    }

    /// The page's bytes.
    pub(super) fn finish(self) -> io::Result<Vec<u8>> {
        match self {
            Sink::Plain(page) => Ok(page),
            Sink::Gzip(writer) => writer.into_inner().map_err(|e| e.into_error())?.finish(),
        }
    }
}

impl fmt::Write for Sink {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        match self {
            Sink::Plain(page) => page.extend_from_slice(text.as_bytes()),
            Sink::Gzip(writer) => writer.write_all(text.as_bytes()).map_err(|_| fmt::Error)?,
        }
        Ok(())
    }
}

/// Writes OpenMetrics text, as the encoder hands it over, to `out` in the Prometheus text
/// format (0.0.4): the two differ, for what prometheus-client writes, in that OpenMetrics
/// names a counter family without its `_total` (which its samples carry) and ends with
/// `# EOF`. prometheus-client writes only OpenMetrics; the older format is what
/// `promtool check metrics` and most tools read.
pub(super) struct PrometheusText<W> {
    out: W,
    /// The line being written.
    line: String,
    /// The last whole line, held back: a `# HELP` that a counter's `# TYPE` renames.
    held: String,
}

impl<W: fmt::Write> PrometheusText<W> {
    pub(super) fn new(out: W) -> Self {
        Self { out, line: String::new(), held: String::new() }
    }

    /// The sink, with every line written to it.
    pub(super) fn finish(mut self) -> Result<W, fmt::Error> {
        self.end_line()?;
        self.out.write_str(&self.held)?;
        Ok(self.out)
    }

    fn end_line(&mut self) -> fmt::Result {
        if self.line.is_empty() || self.line == "# EOF" {
            self.line.clear();
            return Ok(());
        }
        if let Some(name) =
            self.line.strip_prefix("# TYPE ").and_then(|t| t.strip_suffix(" counter"))
        {
            let help = format!("# HELP {name} ");
            if let Some(text) = self.held.strip_prefix(&help) {
                self.held = format!("# HELP {name}_total {text}");
            }
            self.line = format!("# TYPE {name}_total counter");
        }
        self.out.write_str(&self.held)?;
        self.held.clear();
        self.held.push_str(&self.line);
        self.held.push('\n');
        self.line.clear();
        Ok(())
    }
}

impl<W: fmt::Write> fmt::Write for PrometheusText<W> {
    fn write_str(&mut self, mut text: &str) -> fmt::Result {
        while let Some(end) = text.find('\n') {
            self.line.push_str(&text[..end]);
            self.end_line()?;
            text = &text[end + 1..];
        }
        self.line.push_str(text);
        Ok(())
    }
}

/// Whether an `Accept-Encoding` header value accepts gzip (and not at `q=0`).
pub(super) fn accepts_gzip(accept_encoding: &str) -> bool {
    accept_encoding.split(',').any(|item| {
        let mut parts = item.split(';').map(str::trim);
        parts.next().is_some_and(|coding| coding.eq_ignore_ascii_case("gzip"))
            && parts.all(|p| p.strip_prefix("q=").is_none_or(|q| q.parse::<f64>() != Ok(0.0)))
    })
}

/// The labels of a service's frontend, labelled `name/port`: `service` and `port` apart, so
/// that `sum by (service)` needs no `label_replace`.
pub(super) fn service_labels(label: &str) -> Vec<(&'static str, String)> {
    let (service, port) = reconciler_core::state::split_label(label).unwrap_or((label, ""));
    vec![("service", label_value(service)), ("port", label_value(port))]
}

/// `value` escaped for a label: prometheus-client 0.24 writes label values as they are, so a
/// quote, a backslash or a newline would end the value early (the test below catches a
/// version that starts escaping them itself).
pub(super) fn label_value(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::{fmt::Write as _, io::Read as _};

    use super::*;

    const OPENMETRICS: &str = "# HELP runs Runs.\n# TYPE runs counter\nruns_total 3\n\
                               # HELP up Up.\n# TYPE up gauge\nup 1\n# EOF\n";
    const PROMETHEUS: &str = "# HELP runs_total Runs.\n# TYPE runs_total counter\nruns_total 3\n\
                              # HELP up Up.\n# TYPE up gauge\nup 1\n";

    #[test]
    fn openmetrics_becomes_prometheus_text_however_it_is_handed_over() {
        for piece in [1, 3, 7, OPENMETRICS.len()] {
            let mut text = PrometheusText::new(String::new());
            for chunk in OPENMETRICS.as_bytes().chunks(piece) {
                text.write_str(std::str::from_utf8(chunk).unwrap()).unwrap();
            }
            assert_eq!(text.finish().unwrap(), PROMETHEUS, "in pieces of {piece}");
        }
    }

    #[test]
    fn a_gzip_page_unzips_to_the_plain_one() {
        let mut plain = Sink::new(false, 0);
        let mut gzip = Sink::new(true, 0);
        for _ in 0..1_000 {
            plain.write_str(OPENMETRICS).unwrap();
            gzip.write_str(OPENMETRICS).unwrap();
        }
        let (plain, gzip) = (plain.finish().unwrap(), gzip.finish().unwrap());
        let mut unzipped = Vec::new();
        flate2::read::GzDecoder::new(&gzip[..]).read_to_end(&mut unzipped).unwrap();
        assert_eq!(unzipped, plain);
        assert!(gzip.len() * 10 < plain.len(), "{} of {}", gzip.len(), plain.len());
    }

    #[test]
    fn gzip_is_accepted_as_http_says() {
        assert!(accepts_gzip("gzip"));
        assert!(accepts_gzip("deflate, GZIP;q=0.5"));
        assert!(!accepts_gzip("gzip;q=0"));
        assert!(!accepts_gzip("identity"));
        assert!(!accepts_gzip(""));
    }
}
