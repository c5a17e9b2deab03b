//! Ids that travel between the grid's programs, as types of their own so that a job id is not
//! mistaken for a count and a node id for any other string.
//!
//! Both are transparent on the wire (a JSON number, a JSON string): the wire structs that
//! still carry a bare `i64` or `String` convert at the boundary with `From`/[`JobId::get`]/
//! [`NodeId::as_str`].

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The web server's id of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(i64);

impl JobId {
    pub const fn new(id: i64) -> Self {
        JobId(id)
    }

    /// The id as the wire structs carry it.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl From<i64> for JobId {
    fn from(id: i64) -> Self {
        JobId(id)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A compute node's id: the name it enrolled under, announces and holds a certificate for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(String);

impl NodeId {
    pub fn new(id: impl Into<String>) -> Self {
        NodeId(id.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl From<String> for NodeId {
    fn from(id: String) -> Self {
        NodeId(id)
    }
}

impl From<&str> for NodeId {
    fn from(id: &str) -> Self {
        NodeId(id.to_owned())
    }
}

/// Maps and sets keyed by `NodeId` can be looked up with a `&str` (the hash is the string's).
impl Borrow<str> for NodeId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for NodeId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for NodeId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn transparent_on_the_wire() {
        assert_eq!(serde_json::to_string(&JobId::new(42)).unwrap(), "42");
        assert_eq!(serde_json::from_str::<JobId>("7").unwrap().get(), 7);
        assert_eq!(
            serde_json::to_string(&NodeId::from("n-1")).unwrap(),
            "\"n-1\""
        );
        assert_eq!(
            serde_json::from_str::<NodeId>("\"n-2\"").unwrap(),
            NodeId::from("n-2")
        );
    }

    #[test]
    fn shown_and_compared_as_the_bare_value() {
        assert_eq!(JobId::new(-3).to_string(), "-3");
        let n = NodeId::from("fast");
        assert_eq!(n.to_string(), "fast");
        assert_eq!(n, "fast");
        let (a, b) = (NodeId::from("a"), NodeId::from("b"));
        assert!(a < b);
        let m = HashMap::from([(n.clone(), 1)]);
        assert_eq!(m.get("fast"), Some(&1));
    }
}
