//! The scheduler: binds pending instances to hosts. A pass reads the
//! hosts and the placed instances once ([`snapshot`]), then places each
//! pending instance with the filters and scorers of [`default_scheduler`]
//! ([`framework`]), counting each placement before the next. Binding is a
//! compare-and-swap on the instance's revision, so an instance is bound
//! once even if two servers schedule at the same time.

pub mod filters;
pub mod framework;
pub mod quota;
pub mod scorers;
pub mod snapshot;

use std::sync::Arc;
use std::time::Duration;

use nimbus_api::{Host, Image, Instance, InstancePhase, ListOptions};
use nimbus_image::ImportedImage;

pub use framework::{Filter, Rejection, Scheduler, Scorer, Unschedulable};
pub use snapshot::{build_hosts, Demand, HostView, PendingContext};

use crate::error::ServerError;
use crate::state::AppState;

/// Ask the scheduler to run now rather than at its next tick.
pub fn nudge(state: &AppState) {
    state.schedule_now.notify_one();
}

/// Every filter and scorer Nimbus uses, in the order a host is judged: the
/// first filter that refuses a host is the reason counted for it.
pub fn default_scheduler() -> Scheduler {
    Scheduler::new()
        .with_filter(filters::HostReady)
        .with_filter(filters::NotCordoned)
        .with_filter(filters::VolumesHost)
        .with_filter(filters::Architecture)
        .with_filter(filters::ImagePlatform)
        .with_filter(filters::RequiredLabels)
        .with_filter(filters::FreeMemory)
        .with_filter(filters::FreeCpu)
        .with_filter(filters::FreeDisk)
        .with_filter(filters::Affinity)
        .with_filter(filters::AntiAffinity)
        .with_scorer(scorers::PreferredLabels)
        .with_scorer(scorers::SpreadOrPack)
}

pub async fn run(state: Arc<AppState>) {
    let scheduler = default_scheduler();
    let mut start = 0usize;
    loop {
        if let Err(e) = schedule_pending(&state, &scheduler, &mut start).await {
            tracing::warn!(error = %e, "scheduling pass failed");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), state.schedule_now.notified()).await;
    }
}

/// Place `pending` in order on `hosts`, counting each placement before the
/// next; `start` rotates where each search begins so that equal hosts take
/// turns. Pure: this is what `benches/scheduler.rs` measures.
pub fn place_all(
    scheduler: &Scheduler,
    hosts: &mut [HostView],
    pending: &[Instance],
    start: &mut usize,
) -> Vec<Result<String, Unschedulable>> {
    place_all_on(scheduler, hosts, pending, &[], start)
}

/// [`place_all`], with what pins each instance (`contexts[n]` for
/// `pending[n]`: the host of its volumes, its image's architectures;
/// missing entries pin nothing).
pub fn place_all_on(
    scheduler: &Scheduler,
    hosts: &mut [HostView],
    pending: &[Instance],
    contexts: &[PendingContext],
    start: &mut usize,
) -> Vec<Result<String, Unschedulable>> {
    pending
        .iter()
        .enumerate()
        .map(|(n, i)| {
            let mut demand = Demand::of(i);
            if let Some(context) = contexts.get(n) {
                demand.volumes_host = context.volumes_host.clone();
                demand.image_architectures = context.image_architectures.clone();
            }
            let choice = scheduler.place(&demand, hosts, *start);
            *start = start.wrapping_add(1);
            choice.map(|at| {
                hosts[at].add(&demand);
                hosts[at].name.clone()
            })
        })
        .collect()
}

async fn schedule_pending(
    state: &AppState,
    scheduler: &Scheduler,
    start: &mut usize,
) -> Result<(), ServerError> {
    let all = ListOptions {
        limit: Some(5000),
        ..Default::default()
    };
    let pending = state
        .repo
        .list::<Instance>(None, &all, |i| {
            i.status.host.is_none() && i.metadata.deletion_requested_at.is_none()
        })
        .await?;
    if pending.items.is_empty() {
        return Ok(());
    }
    let hosts = state.repo.list::<Host>(None, &all, |_| true).await?.items;
    let placed = state
        .repo
        .list::<Instance>(None, &all, |i| {
            i.status.host.is_some() && !i.status.phase.is_terminal()
        })
        .await?;
    let mut views = build_hosts(&hosts, &placed.items);
    let mut contexts = Vec::with_capacity(pending.items.len());
    let mut images = Vec::with_capacity(pending.items.len());
    for i in &pending.items {
        let image = instance_image(state, i).await;
        contexts.push(PendingContext {
            volumes_host: crate::api::volumes::volumes_host(&state.repo, i).await,
            image_architectures: image.as_ref().map(image_architectures).unwrap_or_default(),
        });
        images.push(image);
    }
    let choices = place_all_on(scheduler, &mut views, &pending.items, &contexts, start);
    // Bindings hold only while this server leads (see `cluster::leader`).
    let repo = state.leader_repo();
    for ((instance, choice), image) in pending.items.into_iter().zip(choices).zip(images) {
        let platform = match &choice {
            Ok(h) => chosen_platform(image.as_ref(), &hosts, h),
            Err(_) => None,
        };
        let project = instance.metadata.project.clone();
        let name = instance.metadata.name.clone();
        let revision = instance.metadata.revision;
        let mut stale = false;
        let result = crate::events::modify_instance(&repo, project.as_deref(), &name, |i| {
            // Compare-and-swap: the store refuses the write if the
            // instance changed since this read (and `modify` reads again);
            // bind only the revision this pass placed, so a spec replaced
            // in between is placed again by the next pass.
            if i.status.host.is_some() {
                return Ok(());
            }
            match &choice {
                Ok(_) if i.metadata.revision != revision => stale = true,
                Ok(h) => {
                    i.status.host = Some(h.clone());
                    i.status.platform = platform.clone();
                    i.status.phase = InstancePhase::Scheduled;
                    i.status.reason = Some(format!("placed on host {h:?}"));
                }
                Err(why) => {
                    i.status.phase = InstancePhase::Pending;
                    i.status.reason = Some(why.to_string());
                }
            }
            Ok(())
        })
        .await;
        match (&result, &choice) {
            (Ok(saved), Ok(h)) if saved.status.host.as_ref() == Some(h) => {
                let waited = (chrono::Utc::now() - saved.metadata.created_at)
                    .to_std()
                    .unwrap_or_default();
                state.metrics.observe_placement(waited);
            }
            (Err(e), _) => {
                tracing::debug!(instance = %name, error = %e, "could not bind instance");
            }
            _ => {}
        }
        if stale {
            nudge(state);
        }
    }
    Ok(())
}

/// The image an instance runs, as its project holds it now.
async fn instance_image(state: &AppState, i: &Instance) -> Option<ImportedImage> {
    let project = i.metadata.project.as_deref();
    match state.repo.try_get::<Image>(project, &i.spec.image).await {
        Ok(image) => image.map(|img| ImportedImage::from_api(&img.status)),
        Err(e) => {
            tracing::debug!(instance = %i.metadata.name, error = %e, "could not read image");
            None
        }
    }
}

/// The architectures an image has platforms for (empty: any host).
fn image_architectures(image: &ImportedImage) -> Vec<String> {
    image
        .platforms
        .iter()
        .map(|p| p.architecture.clone())
        .collect()
}

/// The platform (`linux/amd64`) an image runs on the host named `host`.
fn chosen_platform(image: Option<&ImportedImage>, hosts: &[Host], host: &str) -> Option<String> {
    let arch = &hosts
        .iter()
        .find(|h| h.metadata.name == host)?
        .status
        .architecture;
    image?.platform_for(arch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nimbus_api::{
        HostPhase, HostSpec, HostStatus, InstanceSpec, Metadata, PlacementStrategy, Resources,
    };

    fn host(name: &str, mem: u64, phase: HostPhase) -> Host {
        Host {
            metadata: Metadata::new(name, None),
            spec: HostSpec::default(),
            status: HostStatus {
                phase,
                cpus: 4,
                memory_bytes: mem,
                architecture: "x86_64".into(),
                ..Default::default()
            },
        }
    }

    fn instance(name: &str, mem: u64) -> Instance {
        Instance {
            metadata: Metadata::new(name, Some("p")),
            spec: InstanceSpec {
                image: "x".into(),
                resources: Resources {
                    memory_bytes: Some(mem),
                    ..Default::default()
                },
                ..Default::default()
            },
            status: Default::default(),
        }
    }

    fn place_one(i: &Instance, hosts: &[Host], placed: &[Instance]) -> Result<String, String> {
        let mut views = build_hosts(hosts, placed);
        place_all(
            &default_scheduler(),
            &mut views,
            std::slice::from_ref(i),
            &mut 0,
        )
        .remove(0)
        .map_err(|e| e.to_string())
    }

    fn on(mut i: Instance, host: &str) -> Instance {
        i.status.host = Some(host.into());
        i
    }

    #[test]
    fn picks_the_ready_host_with_most_free_memory() {
        let hosts = vec![
            host("a", 1 << 30, HostPhase::Ready),
            host("b", 4 << 30, HostPhase::Unreachable),
            host("c", 2 << 30, HostPhase::Ready),
        ];
        let placed = [on(instance("x", 1 << 29), "c")];
        assert_eq!(
            place_one(&instance("i", 1 << 20), &hosts, &placed).unwrap(),
            "c"
        );
        let err = place_one(&instance("i", 8 << 30), &hosts, &placed).unwrap_err();
        assert_eq!(
            err,
            "unschedulable: 2 hosts lack 8GiB of free memory, 1 host is not ready; see `nimbus host list`"
        );
        assert!(place_one(&instance("i", 1), &[], &[])
            .unwrap_err()
            .contains("no hosts are registered"));
    }

    #[test]
    fn unschedulable_names_each_filter_and_its_count() {
        let mut hosts = vec![
            host("a", 1 << 30, HostPhase::Ready),
            host("b", 1 << 30, HostPhase::Ready),
            host("c", 1 << 30, HostPhase::Ready),
            host("d", 8 << 30, HostPhase::Ready),
        ];
        hosts[2].metadata.labels = [("site".to_string(), "sh".to_string())].into();
        hosts[3].spec.unschedulable = true;
        let mut i = instance("i", 2 << 30);
        i.spec.placement.require_labels = [("site".to_string(), "bj".to_string())].into();
        let err = place_one(&i, &hosts, &[]).unwrap_err();
        // Labels are checked before memory, so all three count there.
        assert_eq!(
            err,
            "unschedulable: 3 hosts lack label site=bj, 1 host is cordoned; see `nimbus host list`"
        );
        i.spec.placement.require_labels.clear();
        let err = place_one(&i, &hosts, &[]).unwrap_err();
        assert_eq!(
            err,
            "unschedulable: 3 hosts lack 2GiB of free memory, 1 host is cordoned; see `nimbus host list`"
        );
    }

    #[test]
    fn spread_takes_turns_and_pack_fills_one_host() {
        let hosts: Vec<Host> = ["a", "b", "c"]
            .iter()
            .map(|n| host(n, 4 << 30, HostPhase::Ready))
            .collect();
        let pending: Vec<Instance> = (0..6).map(|n| instance(&format!("i{n}"), 0)).collect();
        let mut views = build_hosts(&hosts, &[]);
        let placed = place_all(&default_scheduler(), &mut views, &pending, &mut 0);
        let mut count = std::collections::BTreeMap::<String, usize>::new();
        for p in placed {
            *count.entry(p.unwrap()).or_default() += 1;
        }
        assert_eq!(count.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);

        let packed: Vec<Instance> = pending
            .into_iter()
            .map(|mut i| {
                i.spec.placement.strategy = PlacementStrategy::Pack;
                i
            })
            .collect();
        let mut views = build_hosts(&hosts, &[]);
        let placed = place_all(&default_scheduler(), &mut views, &packed, &mut 0);
        let first = placed[0].clone().unwrap();
        assert!(
            placed.iter().all(|p| p.as_ref().unwrap() == &first),
            "{placed:?}"
        );
    }

    #[test]
    fn anti_affinity_puts_replicas_on_different_hosts_until_none_is_left() {
        let hosts: Vec<Host> = ["a", "b"]
            .iter()
            .map(|n| host(n, 4 << 30, HostPhase::Ready))
            .collect();
        let pending: Vec<Instance> = (0..3)
            .map(|n| {
                let mut i = instance(&format!("web{n}"), 0);
                i.metadata.labels = [("app".to_string(), "web".to_string())].into();
                i.spec.placement.anti_affinity = i.metadata.labels.clone();
                i.spec.placement.strategy = PlacementStrategy::Pack;
                i
            })
            .collect();
        let mut views = build_hosts(&hosts, &[]);
        let placed = place_all(&default_scheduler(), &mut views, &pending, &mut 0);
        assert_ne!(placed[0].as_ref().unwrap(), placed[1].as_ref().unwrap());
        assert_eq!(
            placed[2].as_ref().unwrap_err().to_string(),
            "unschedulable: 2 hosts run an instance labelled app=web; see `nimbus host list`"
        );
    }

    #[test]
    fn preferred_labels_win_over_spread() {
        let mut hosts: Vec<Host> = ["a", "b"]
            .iter()
            .map(|n| host(n, 4 << 30, HostPhase::Ready))
            .collect();
        hosts[1].metadata.labels = [("disk".to_string(), "ssd".to_string())].into();
        let placed: Vec<Instance> = (0..3)
            .map(|n| on(instance(&format!("x{n}"), 0), "b"))
            .collect();
        let mut i = instance("i", 0);
        assert_eq!(place_one(&i, &hosts, &placed).unwrap(), "a");
        i.spec.placement.prefer_labels = hosts[1].metadata.labels.clone();
        assert_eq!(place_one(&i, &hosts, &placed).unwrap(), "b");
    }

    #[test]
    fn stopped_instances_reserve_nothing() {
        let hosts = vec![host("a", 1 << 30, HostPhase::Ready)];
        let mut stopped = on(instance("x", 1 << 30), "a");
        stopped.spec.desired_state = nimbus_api::DesiredState::Stopped;
        assert_eq!(
            place_one(&instance("i", 1 << 30), &hosts, &[stopped]).unwrap(),
            "a"
        );
    }

    #[test]
    fn a_large_cluster_is_sampled_but_still_all_searched_when_nothing_fits() {
        let hosts: Vec<Host> = (0..3000)
            .map(|n| host(&format!("h{n}"), 1 << 30, HostPhase::Ready))
            .collect();
        let err = place_one(&instance("i", 2 << 30), &hosts, &[]).unwrap_err();
        assert!(err.starts_with("unschedulable: 3000 hosts lack"), "{err}");
    }
}
