//! Which nodes a service is on (`spec.nodeSelector`), with Kubernetes' label-selector
//! semantics: every `matchLabels` pair and every `matchExpressions` requirement must hold (an
//! empty selector selects every node).
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node as a nodeSelector sees it: its name and labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its zone (`spec.topology`): its label of the zone key (`zone`, or the daemon's
    /// `node.zoneLabel`).
    #[serde(default)]
    pub zone: Option<String>,
}

/// `spec.nodeSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<Requirement>,
}

/// One of `matchExpressions`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    pub key: String,
    pub operator: Operator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Operator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl NodeSelector {
    /// Whether a node with `labels` is selected.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        let pairs = self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v));
        pairs && self.match_expressions.iter().all(|r| r.holds(labels))
    }
}

impl Requirement {
    fn holds(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            // As Kubernetes: a node without the key is not in the set, so NotIn holds.
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }

    /// What is wrong with it that a schema cannot say: values with `Exists`/`DoesNotExist`,
    /// none with `In`/`NotIn`.
    pub fn problem(&self) -> Option<&'static str> {
        match (self.operator, self.values.is_empty()) {
            (Operator::In | Operator::NotIn, true) => {
                Some("`In` and `NotIn` need at least one value")
            }
            (Operator::Exists | Operator::DoesNotExist, false) => {
                Some("`Exists` and `DoesNotExist` take no values")
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn requirement(key: &str, operator: Operator, values: &[&str]) -> Requirement {
        let values = values.iter().map(|v| v.to_string()).collect();
        Requirement { key: key.to_owned(), operator, values }
    }

    #[test]
    fn labels_and_expressions_all_hold_as_in_kubernetes() {
        let node = labels(&[("zone", "a"), ("tier", "edge")]);
        assert!(NodeSelector::default().selects(&node));
        let zone_a = NodeSelector { match_labels: labels(&[("zone", "a")]), ..Default::default() };
        assert!(zone_a.selects(&node) && !zone_a.selects(&labels(&[("zone", "b")])));
        let cases = [
            (requirement("zone", Operator::In, &["a", "b"]), true),
            (requirement("zone", Operator::NotIn, &["a"]), false),
            (requirement("gpu", Operator::NotIn, &["yes"]), true),
            (requirement("tier", Operator::Exists, &[]), true),
            (requirement("gpu", Operator::DoesNotExist, &[]), true),
            (requirement("gpu", Operator::In, &["yes"]), false),
        ];
        for (requirement, expected) in cases {
            let selector =
                NodeSelector { match_expressions: vec![requirement.clone()], ..zone_a.clone() };
            assert_eq!(selector.selects(&node), expected, "{requirement:?}");
        }
        assert!(requirement("zone", Operator::In, &[]).problem().is_some());
        assert!(requirement("zone", Operator::Exists, &["a"]).problem().is_some());
    }
}
