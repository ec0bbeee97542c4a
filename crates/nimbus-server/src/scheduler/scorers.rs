//! Scorers: rank the hosts that fit. Preferred labels outweigh spread or
//! pack, which only break ties among equally preferred hosts.

use nimbus_api::PlacementStrategy;

use super::framework::Scorer;
use super::snapshot::{Demand, HostView};

/// One preferred label outweighs any spread or pack score.
pub const PREFERRED_LABEL_WEIGHT: i64 = 1 << 52;

/// Spread: more free memory, then fewer instances, first (as Kubernetes'
/// `LeastAllocated`). Pack: the reverse, so hosts fill one by one.
pub struct SpreadOrPack;

impl Scorer for SpreadOrPack {
    fn name(&self) -> &'static str {
        "spread-or-pack"
    }
    fn score(&self, demand: &Demand, host: &HostView) -> i64 {
        // Free memory in MiB (below 2^30 for any host under a petabyte)
        // weighs more than the instance count, which breaks ties between
        // hosts of equal free memory (best-effort instances reserve none).
        let free_mib = (host.memory_bytes_free() >> 20).min((1 << 30) - 1) as i64;
        let instances = i64::from(host.used.instances.min((1 << 20) - 1));
        let emptiness = (free_mib << 20) - instances;
        match demand.placement.strategy {
            PlacementStrategy::Spread => emptiness,
            PlacementStrategy::Pack => -emptiness,
        }
    }
}

/// More of `placement.prefer_labels` on the host, higher.
pub struct PreferredLabels;

impl Scorer for PreferredLabels {
    fn name(&self) -> &'static str {
        "preferred-labels"
    }
    fn score(&self, demand: &Demand, host: &HostView) -> i64 {
        let matched = demand
            .placement
            .prefer_labels
            .iter()
            .filter(|(k, v)| host.labels.get(*k) == Some(*v))
            .count() as i64;
        matched * PREFERRED_LABEL_WEIGHT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(instances: u32, free_mib: u64) -> HostView {
        let mut h = HostView {
            memory_bytes_total: 4 << 30,
            ..Default::default()
        };
        h.used.instances = instances;
        h.used.memory_bytes = (4 << 30) - (free_mib << 20);
        h
    }

    #[test]
    fn spread_prefers_emptier_hosts_and_pack_fuller_ones() {
        let mut d = Demand::default();
        let s = |d: &Demand, h: HostView| SpreadOrPack.score(d, &h);
        // More free memory wins when spreading; equal memory: fewer instances.
        assert!(s(&d, host(3, 2000)) > s(&d, host(0, 1000)));
        assert!(s(&d, host(0, 1000)) > s(&d, host(1, 1000)));
        d.placement.strategy = PlacementStrategy::Pack;
        assert!(s(&d, host(0, 1000)) > s(&d, host(3, 2000)));
        assert!(s(&d, host(1, 1000)) > s(&d, host(0, 1000)));
    }

    #[test]
    fn preferred_labels_count_matches() {
        let mut d = Demand::default();
        d.placement.prefer_labels = [("disk".to_string(), "ssd".to_string())].into();
        let mut ssd = host(5, 10);
        ssd.labels = d.placement.prefer_labels.clone();
        assert_eq!(PreferredLabels.score(&d, &ssd), PREFERRED_LABEL_WEIGHT);
        assert_eq!(PreferredLabels.score(&d, &host(0, 4000)), 0);
        // A preferred but busy host beats an idle plain one.
        let total = |h: &HostView| PreferredLabels.score(&d, h) + SpreadOrPack.score(&d, h);
        assert!(total(&ssd) > total(&host(0, 4000)));
    }
}
