//! The placement loop: every filter must admit a host, then the scorers
//! rank the hosts that are left. Filters and scorers are small types behind
//! two traits, so a new rule (say, "an instance goes to its volumes' host")
//! is one more type handed to [`Scheduler::with_filter`]; the loop never
//! names them.

use std::collections::BTreeMap;
use std::fmt;

use super::snapshot::{Demand, HostView};

/// Why one filter turned a host down, phrased for any number of hosts:
/// `verb` is conjugated by the count ("1 host lacks", "2 hosts lack").
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rejection {
    verb: Verb,
    what: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Verb {
    /// "is not ready" / "are not ready"
    Is,
    /// "lacks memory" / "lack memory"
    Lacks,
    /// "runs an instance with app=web" / "run ..."
    Runs,
}

impl Rejection {
    /// The host is in some state: `Rejection::is("cordoned")`.
    pub fn is(what: impl Into<String>) -> Self {
        Rejection {
            verb: Verb::Is,
            what: what.into(),
        }
    }

    /// The host lacks something: `Rejection::lacks("label site=bj")`.
    pub fn lacks(what: impl Into<String>) -> Self {
        Rejection {
            verb: Verb::Lacks,
            what: what.into(),
        }
    }

    /// The host runs something that excludes the instance.
    pub fn runs(what: impl Into<String>) -> Self {
        Rejection {
            verb: Verb::Runs,
            what: what.into(),
        }
    }

    /// "1 host lacks memory", "3 hosts are cordoned".
    pub fn describe(&self, hosts: usize) -> String {
        let one = hosts == 1;
        let verb = match (self.verb, one) {
            (Verb::Is, true) => "is",
            (Verb::Is, false) => "are",
            (Verb::Lacks, true) => "lacks",
            (Verb::Lacks, false) => "lack",
            (Verb::Runs, true) => "runs",
            (Verb::Runs, false) => "run",
        };
        let noun = if one { "host" } else { "hosts" };
        format!("{hosts} {noun} {verb} {}", self.what)
    }
}

/// Decides whether one host may take the instance.
pub trait Filter: Send + Sync {
    /// Short name for logs and tests.
    fn name(&self) -> &'static str;
    fn admit(&self, demand: &Demand, host: &HostView) -> Result<(), Rejection>;
}

/// Ranks a host that passed every filter; higher is better. Scores of all
/// scorers are added, so a scorer's scale is its weight.
pub trait Scorer: Send + Sync {
    fn name(&self) -> &'static str;
    fn score(&self, demand: &Demand, host: &HostView) -> i64;
}

/// No host may take the instance, and why, counted per reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unschedulable {
    pub hosts: usize,
    pub rejections: BTreeMap<Rejection, usize>,
}

impl fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hosts == 0 {
            return write!(
                f,
                "unschedulable: no hosts are registered; start an agent (`nimbus up` runs one)"
            );
        }
        let mut counted: Vec<(&Rejection, usize)> =
            self.rejections.iter().map(|(r, n)| (r, *n)).collect();
        // Most common reason first; ties in a stable order.
        counted.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let reasons: Vec<String> = counted.iter().map(|(r, n)| r.describe(*n)).collect();
        write!(
            f,
            "unschedulable: {}; see `nimbus host list`",
            reasons.join(", ")
        )
    }
}

/// Filters and scorers, in order. The first filter that refuses a host is
/// the one counted for it.
pub struct Scheduler {
    filters: Vec<Box<dyn Filter>>,
    scorers: Vec<Box<dyn Scorer>>,
    /// Stop looking once this many hosts fit (at least
    /// `min_feasible_hosts`, else this share of the cluster in percent), as
    /// Kubernetes' `percentageOfNodesToScore` does: a large cluster is
    /// sampled from a rotating start rather than scored in full.
    min_feasible_hosts: usize,
    feasible_percent: usize,
}

impl Scheduler {
    pub fn new() -> Self {
        Scheduler {
            filters: Vec::new(),
            scorers: Vec::new(),
            min_feasible_hosts: 100,
            feasible_percent: 5,
        }
    }

    pub fn with_filter(mut self, f: impl Filter + 'static) -> Self {
        self.filters.push(Box::new(f));
        self
    }

    pub fn with_scorer(mut self, s: impl Scorer + 'static) -> Self {
        self.scorers.push(Box::new(s));
        self
    }

    /// How many hosts that fit are enough to choose from, out of `hosts`.
    fn enough_feasible(&self, hosts: usize) -> usize {
        (hosts * self.feasible_percent / 100).max(self.min_feasible_hosts)
    }

    /// The index of the best host for `demand`, looking at hosts from
    /// `start` on (wrapping), or why none fits.
    pub fn place(
        &self,
        demand: &Demand,
        hosts: &[HostView],
        start: usize,
    ) -> Result<usize, Unschedulable> {
        let n = hosts.len();
        let enough = self.enough_feasible(n);
        let mut feasible = 0usize;
        let mut best: Option<(usize, i64)> = None;
        let mut rejections: BTreeMap<Rejection, usize> = BTreeMap::new();
        for k in 0..n {
            let idx = (start + k) % n.max(1);
            let host = &hosts[idx];
            if let Some(why) = self
                .filters
                .iter()
                .find_map(|f| f.admit(demand, host).err())
            {
                *rejections.entry(why).or_default() += 1;
                continue;
            }
            let score: i64 = self.scorers.iter().map(|s| s.score(demand, host)).sum();
            // Equal scores: the host seen first keeps it, so rotating
            // `start` spreads ties.
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((idx, score));
            }
            feasible += 1;
            if feasible >= enough {
                break;
            }
        }
        match best {
            Some((idx, _)) => Ok(idx),
            None => Err(Unschedulable {
                hosts: n,
                rejections,
            }),
        }
    }
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::new()
    }
}
