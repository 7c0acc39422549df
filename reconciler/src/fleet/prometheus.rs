//! Instant queries to Prometheus' HTTP API (`GET /api/v1/query`): the fleet's shared view,
//! which every daemon's `/metrics` feeds.
use std::{collections::BTreeMap, time::Duration};

use serde::Deserialize;

/// Why Prometheus gave no answer to use.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("Prometheus at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("Prometheus at {url} refused `{query}` (HTTP {status}): {body}")]
    Refused { url: String, query: String, status: u16, body: String },
    #[error("Prometheus at {url} answered `{query}` with what is no instant vector: {reason}")]
    Unreadable { url: String, query: String, reason: Unreadable },
}

/// What is wrong with an answer.
#[derive(Debug, thiserror::Error)]
pub enum Unreadable {
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Failed(String),
    #[error("a success with no data")]
    NoData,
    #[error("a {0}")]
    NotVector(String),
    #[error("the value `{0}`")]
    Value(String),
}

/// One series of an instant vector: its labels (`__name__` among them, if the query kept
/// it) and its value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// An instant vector, and the time (Unix seconds, Prometheus' clock) it was evaluated at.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Vector {
    pub at: f64,
    pub samples: Vec<Sample>,
}

/// A Prometheus server, by the URL of its web root (`http://prometheus:9090`, or with the
/// path prefix of `--web.route-prefix`).
pub struct Prometheus {
    url: String,
    agent: ureq::Agent,
}

impl Prometheus {
    /// The server at `url`; each query may take up to `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Prometheus {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .build()
            .into();
        Prometheus { url: url.trim_end_matches('/').to_owned(), agent }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The instant vector of `query`, evaluated now.
    pub fn query(&self, query: &str) -> Result<Vector, QueryError> {
        let unreachable =
            |reason: String| QueryError::Unreachable { url: self.url.clone(), reason };
        let response = self
            .agent
            .get(format!("{}/api/v1/query", self.url))
            .query("query", query)
            .call()
            .map_err(|e| unreachable(e.to_string()))?;
        let status = response.status().as_u16();
        // An answer is a few hundred bytes a node: 64 MiB is a fleet of over 100 000.
        let body = response
            .into_body()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| unreachable(e.to_string()))?;
        if status != 200 {
            let body = body.chars().take(300).collect();
            return Err(QueryError::Refused {
                url: self.url.clone(),
                query: query.into(),
                status,
                body,
            });
        }
        parse(&body).map_err(|reason| QueryError::Unreadable {
            url: self.url.clone(),
            query: query.to_owned(),
            reason,
        })
    }
}

#[derive(Deserialize)]
struct Answer {
    status: String,
    data: Option<Data>,
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    result_type: String,
    result: Vec<Series>,
}

#[derive(Deserialize)]
struct Series {
    metric: BTreeMap<String, String>,
    /// `[unix seconds, "value"]`.
    value: (f64, String),
}

/// The instant vector in an answer of `/api/v1/query`.
fn parse(body: &str) -> Result<Vector, Unreadable> {
    let answer: Answer = serde_json::from_str(body)?;
    if answer.status != "success" {
        return Err(Unreadable::Failed(answer.error.unwrap_or(answer.status)));
    }
    let data = answer.data.ok_or(Unreadable::NoData)?;
    if data.result_type != "vector" {
        return Err(Unreadable::NotVector(data.result_type));
    }
    let mut vector = Vector::default();
    for series in data.result {
        let (at, text) = series.value;
        let value = text.parse::<f64>().map_err(|_| Unreadable::Value(text.clone()))?;
        vector.at = at;
        vector.samples.push(Sample { labels: series.metric, value });
    }
    Ok(vector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instant_vector_is_read_with_its_time() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"__name__":"reconciler_ready","instance":"10.0.0.1:9469"},
             "value":[1765000000.5,"1"]}]}}"#;
        let vector = parse(body).unwrap();
        assert_eq!(vector.at, 1_765_000_000.5);
        assert_eq!(vector.samples[0].value, 1.0);
        assert_eq!(vector.samples[0].labels["instance"], "10.0.0.1:9469");
    }

    #[test]
    fn errors_and_other_result_types_are_refused() {
        let error = r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#;
        assert_eq!(parse(error).unwrap_err().to_string(), "parse error");
        let matrix = r#"{"status":"success","data":{"resultType":"matrix","result":[]}}"#;
        assert_eq!(parse(matrix).unwrap_err().to_string(), "a matrix");
        assert!(parse("<html>").is_err());
    }
}
