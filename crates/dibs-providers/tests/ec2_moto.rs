//! The EC2 adapter against a third-party EC2: moto's server on loopback, started by
//! `tests/moto_harness.py` (which adds the capacity errors and signature checks moto lacks;
//! `tests/support/moto.rs` drives it). Each test starts its own server, so tests share no
//! state.

mod support;

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use support::moto::Moto;

use dibs_core::types::Accelerator;
use dibs_providers::ec2::{
    Credentials, Ec2, Ec2Config, ErrorClass, InstanceState, LaunchError, LaunchSource, LaunchSpec, Launched,
    Market, Owner, TAG_ALLOCATION, TAG_ENTRY, TAG_REQUEST,
};

const REGION: &str = "us-east-1";
const P5: &str = "p5.48xlarge";
/// Long enough for moto, which terminates at once.
const CONFIRM_WITHIN: Duration = Duration::from_secs(10);

/// What the adapter tests do with moto: the adapter, under a key.
trait Adapters {
    fn ec2_with(&self, credentials: Credentials) -> Ec2;
    /// Before auth is on, moto takes any key.
    fn ec2(&self) -> Ec2 {
        self.ec2_with(Credentials::new("AKIDTEST", "test-secret", None))
    }
    fn switch_auth_on_keys(&mut self) -> (Credentials, Credentials);
}

impl Adapters for Moto {
    fn ec2_with(&self, credentials: Credentials) -> Ec2 {
        Ec2::new(Ec2Config::new(REGION, Some(&self.endpoint), credentials).expect("a valid configuration"))
    }

    fn switch_auth_on_keys(&mut self) -> (Credentials, Credentials) {
        let ((id, secret), (describe_id, describe_secret)) = self.switch_auth_on();
        (Credentials::new(&id, &secret, None), Credentials::new(&describe_id, &describe_secret, None))
    }
}

fn spec(allocation: u64, zones: &[&str]) -> LaunchSpec {
    LaunchSpec {
        region: REGION.to_owned(),
        instance_type: P5.to_owned(),
        zones: zones.iter().map(|zone| (*zone).to_owned()).collect(),
        nodes: NonZeroU32::new(2).unwrap(),
        owner: Owner { request: format!("req-{allocation}"), allocation, entry: 40 + allocation },
        source: LaunchSource::Image {
            image_id: "ami-12345678".to_owned(),
            subnet_by_zone: BTreeMap::new(),
            security_group_ids: Vec::new(),
        },
        market: Market::OnDemand,
        dry_run: false,
    }
}

/// A launch's outcome as a line a reader checks at a glance.
fn describe(launched: &Result<Launched, LaunchError>) -> String {
    match launched {
        Ok(Launched::Found(instances)) => format!("found {} in {}", instances.len(), zones_of(instances)),
        Ok(Launched::Launched { zone, instances, passed }) => {
            let passed: Vec<String> = passed.iter().map(ToString::to_string).collect();
            format!("launched {} in {zone} after [{}]", instances.len(), passed.join(", "))
        }
        Ok(Launched::DryRun { zone, .. }) => format!("dry run would launch in {zone}"),
        Err(error) => format!("error: {error}"),
    }
}

fn zones_of(instances: &[dibs_providers::ec2::Instance]) -> String {
    let mut zones: Vec<&str> = instances.iter().filter_map(|i| i.zone.as_deref()).collect();
    zones.dedup();
    zones.join(",")
}

fn ids(instances: &[dibs_providers::ec2::Instance]) -> Vec<String> {
    let mut ids: Vec<String> = instances.iter().map(|i| i.id.clone()).collect();
    ids.sort();
    ids
}

#[test]
fn p5_48xlarge_is_eight_h100s_offered_in_every_zone_of_us_east_1() {
    let Some(moto) = Moto::start() else { return };
    let ec2 = moto.ec2();
    let types = ec2.gpu_instance_types(REGION, &[P5]).unwrap();
    let described: Vec<String> = types
        .iter()
        .map(|t| {
            format!(
                "{}: {} x {} ({} {:?}, {:?} MiB)",
                t.instance_type,
                t.gpus_per_node,
                t.accelerator,
                t.manufacturer.as_deref().unwrap_or("?"),
                t.gpu_name,
                t.gpu_memory_mib
            )
        })
        .collect();
    assert_eq!(described, ["p5.48xlarge: 8 x H100 (NVIDIA \"H100\", Some(81920) MiB)"]);

    let started = Instant::now();
    let quoted = ec2.quote_capacity(REGION, &Accelerator::new("H100").unwrap()).unwrap();
    eprintln!("quote_capacity (every instance type described) took {:?}", started.elapsed());
    let quoted: Vec<String> = quoted
        .iter()
        .map(|q| format!("{} x{} in {}", q.instance_type, q.gpus_per_node, q.zones.join(" ")))
        .collect();
    assert!(
        quoted.contains(
            &"p5.48xlarge x8 in us-east-1a us-east-1b us-east-1c us-east-1d us-east-1e us-east-1f".to_owned()
        ),
        "{quoted:#?}"
    );
    let a100_80 = ec2.quote_capacity(REGION, &Accelerator::new("A100-80GB").unwrap()).unwrap();
    let a100_80: Vec<&str> = a100_80.iter().map(|q| q.instance_type.as_str()).collect();
    assert!(a100_80.contains(&"p4de.24xlarge") && !a100_80.contains(&"p4d.24xlarge"), "{a100_80:?}");
}

#[test]
fn a_launch_is_tagged_found_by_tag_and_never_repeated() {
    let Some(mut moto) = Moto::start() else { return };
    let ec2 = moto.ec2();
    let first = ec2.launch(&spec(7, &["us-east-1a", "us-east-1b"]));
    assert_eq!(describe(&first), "launched 2 in us-east-1a after []");
    let Ok(Launched::Launched { instances: launched, .. }) = first else { unreachable!() };
    for instance in &launched {
        assert_eq!(instance.instance_type, P5);
        assert_eq!(instance.tags.get(TAG_ALLOCATION).map(String::as_str), Some("7"));
        assert_eq!(instance.tags.get(TAG_REQUEST).map(String::as_str), Some("req-7"));
        assert_eq!(instance.tags.get(TAG_ENTRY).map(String::as_str), Some("47"));
    }

    let found = ec2.instances_of(REGION, 7).unwrap();
    assert_eq!(ids(&found), ids(&launched));
    assert!(found.iter().all(|i| i.state == InstanceState::Running), "{found:?}");

    // A second launch of the same allocation (a retry, a restart after kill -9) finds them.
    let again = ec2.launch(&spec(7, &["us-east-1a", "us-east-1b"]));
    assert_eq!(describe(&again), "found 2 in us-east-1a");
    assert_eq!(moto.run_calls(), BTreeMap::from([("us-east-1a".to_owned(), 1)]));
    assert_eq!(ids(&ec2.tagged_by_dibs(REGION).unwrap()), ids(&launched));
    assert!(ec2.instances_of(REGION, 8).unwrap().is_empty(), "another allocation owns nothing");
}

#[test]
fn a_zone_out_of_capacity_is_passed_over_and_remembered() {
    let Some(mut moto) = Moto::start() else { return };
    let ec2 = moto.ec2();
    moto.out_of_capacity(&["us-east-1a"]);
    let zones = ["us-east-1a", "us-east-1b", "us-east-1c"];
    let started = Instant::now();
    let launched = ec2.launch(&spec(1, &zones));
    eprintln!("launch with zone a out of capacity took {:?}", started.elapsed());
    assert_eq!(
        describe(&launched),
        "launched 2 in us-east-1b after [us-east-1a: InsufficientInstanceCapacity]"
    );
    assert_eq!(zones_of(&ec2.instances_of(REGION, 1).unwrap()), "us-east-1b");

    // The next allocation does not ask zone a again while it is remembered.
    let next = ec2.launch(&spec(2, &zones));
    assert_eq!(
        describe(&next),
        "launched 2 in us-east-1b after [us-east-1a: InsufficientInstanceCapacity (remembered)]"
    );
    let calls = moto.run_calls();
    assert_eq!(calls, BTreeMap::from([("us-east-1a".to_owned(), 1), ("us-east-1b".to_owned(), 2)]));
}

#[test]
fn every_zone_out_of_capacity_is_declined_with_each_zones_code() {
    let Some(mut moto) = Moto::start() else { return };
    let ec2 = moto.ec2();
    moto.out_of_capacity(&["us-east-1a", "us-east-1b", "us-east-1c"]);
    let launched = ec2.launch(&spec(3, &["us-east-1a", "us-east-1b", "us-east-1c"]));
    assert_eq!(
        describe(&launched),
        "error: no capacity for 2 x p5.48xlarge in us-east-1: us-east-1a: InsufficientInstanceCapacity, \
         us-east-1b: InsufficientInstanceCapacity, us-east-1c: InsufficientInstanceCapacity"
    );
    let Err(LaunchError::NoCapacity { failures, .. }) = launched else { unreachable!() };
    assert!(failures[0].message.contains("sufficient capacity"), "{:?}", failures[0]);
    assert!(ec2.instances_of(REGION, 3).unwrap().is_empty());
}

#[test]
fn terminating_an_allocation_leaves_none_of_its_instances_running() {
    let Some(moto) = Moto::start() else { return };
    let ec2 = moto.ec2();
    assert!(ec2.launch(&spec(5, &["us-east-1c"])).is_ok());
    assert!(ec2.launch(&spec(6, &["us-east-1c"])).is_ok());
    assert_eq!(ec2.tagged_by_dibs(REGION).unwrap().len(), 4);

    let termination = ec2.terminate(REGION, 5, CONFIRM_WITHIN).unwrap();
    assert_eq!(termination.requested.len(), 2);
    assert!(termination.is_confirmed(), "{termination:?}");
    assert!(ec2.instances_of(REGION, 5).unwrap().is_empty());
    assert_eq!(ec2.instances_of(REGION, 6).unwrap().len(), 2, "the other allocation keeps its nodes");
    assert_eq!(ec2.tagged_by_dibs(REGION).unwrap().len(), 2);

    // A second release (a retry) finds nothing to terminate.
    let again = ec2.terminate(REGION, 5, CONFIRM_WITHIN).unwrap();
    assert!(again.requested.is_empty() && again.is_confirmed());
}

#[test]
fn a_wrong_secret_is_a_credential_error_naming_the_key() {
    let Some(mut moto) = Moto::start() else { return };
    let (credentials, describe_only) = moto.switch_auth_on_keys();
    let ec2 = moto.ec2_with(credentials.clone());
    assert_eq!(ec2.zones(REGION).unwrap().len(), 6, "the right secret is accepted");

    let key_id = credentials.access_key_id().to_owned();
    let wrong = moto.ec2_with(Credentials::new(&key_id, "not-the-secret", None));
    let error = wrong.zones(REGION).unwrap_err();
    assert_eq!(error.class(), ErrorClass::Auth);
    assert_eq!(error.code(), Some("AuthFailure"));
    let message = error.to_string();
    assert!(message.contains("HTTP 401 AuthFailure"), "{message}");
    assert!(message.contains(&key_id) && message.contains("AWS_SECRET_ACCESS_KEY"), "{message}");
    assert!(!message.contains("not-the-secret"), "{message}");

    // A launch stops at once: no zone is tried, nothing is called "no capacity".
    let launched = wrong.launch(&spec(9, &["us-east-1a", "us-east-1b"]));
    assert!(matches!(launched, Err(LaunchError::Credentials(_))), "{launched:?}");
    assert_eq!(moto.run_calls(), BTreeMap::new());

    // A key that may describe but not launch: the permission is named, not "no capacity".
    let key_id = describe_only.access_key_id().to_owned();
    let cannot_launch = moto.ec2_with(describe_only).launch(&spec(10, &["us-east-1a", "us-east-1b"]));
    assert_eq!(
        describe(&cannot_launch),
        format!(
            "error: EC2 refused dibs's credentials: EC2 RunInstances in us-east-1 answered HTTP 403 \
             AccessDenied: User: arn:aws:iam::123456789012:user/dibs-describe-only is not authorized \
             to perform: ec2:RunInstances (access key {key_id} is not allowed ec2:RunInstances; grant \
             it in IAM)"
        )
    );
}

#[test]
fn a_dry_run_succeeds_and_launches_nothing() {
    let Some(mut moto) = Moto::start() else { return };
    let ec2 = moto.ec2();
    let dry = ec2.launch(&LaunchSpec { dry_run: true, ..spec(4, &["us-east-1d", "us-east-1e"]) });
    assert_eq!(describe(&dry), "dry run would launch in us-east-1d");
    assert!(ec2.instances_of(REGION, 4).unwrap().is_empty());
    assert!(ec2.tagged_by_dibs(REGION).unwrap().is_empty());
    assert_eq!(moto.run_calls(), BTreeMap::new(), "moto answers a dry run before launching");
}

#[test]
fn throttled_launches_are_retried_and_launch_once() {
    let Some(mut moto) = Moto::start() else { return };
    let ec2 = moto.ec2();
    moto.throttle(2);
    let launched = ec2.launch(&spec(11, &["us-east-1a", "us-east-1b"]));
    assert_eq!(describe(&launched), "launched 2 in us-east-1a after []");
    assert_eq!(moto.run_calls(), BTreeMap::from([("us-east-1a".to_owned(), 3)]), "two refusals, one launch");
    assert_eq!(ec2.instances_of(REGION, 11).unwrap().len(), 2);
}

#[test]
fn the_operators_launch_template_and_spot_are_what_is_launched() {
    let Some(mut moto) = Moto::start() else { return };
    let ec2 = moto.ec2();
    moto.launch_template("dibs-gpu");
    let from_template = LaunchSpec {
        source: LaunchSource::Template { name: "dibs-gpu".to_owned(), version: None },
        market: Market::Spot { max_price: None },
        ..spec(12, &["us-east-1f"])
    };
    assert_eq!(describe(&ec2.launch(&from_template)), "launched 2 in us-east-1f after []");
    let instances = ec2.instances_of(REGION, 12).unwrap();
    assert!(instances.iter().all(|i| i.spot && i.instance_type == P5), "{instances:?}");

    let missing = LaunchSpec {
        source: LaunchSource::Template { name: "no-such-template".to_owned(), version: None },
        ..spec(13, &["us-east-1a", "us-east-1b"])
    };
    let launched = ec2.launch(&missing);
    assert_eq!(
        describe(&launched),
        "error: launching p5.48xlarge failed: EC2 RunInstances in us-east-1 answered HTTP 400 \
         InvalidLaunchTemplateName.NotFoundException: At least one of the launch templates specified \
         in the request does not exist.",
        "a configuration error stops at the first zone"
    );
    assert_eq!(moto.run_calls().get("us-east-1b"), None);
}

/// Every GPU moto's EC2 knows, in dibs's names: EC2 names a GPU by model and gives its
/// memory apart, and dibs's alias table and memory rule make the canonical name. The names
/// that stay outside SkyPilot's canonical list are the gaps a catalog must agree on.
#[test]
fn every_gpu_moto_knows_has_a_dibs_name() {
    let Some(moto) = Moto::start() else { return };
    let types = moto.ec2().gpu_instance_types(REGION, &[]).unwrap();
    let mut names: Vec<String> = types
        .iter()
        .map(|t| format!("{} {} GiB -> {}", t.gpu_name, t.gpu_memory_mib.unwrap_or(0) / 1024, t.accelerator))
        .collect();
    names.sort();
    names.dedup();
    let by_type = |instance_type: &str| {
        types
            .iter()
            .find(|t| t.instance_type == instance_type)
            .map(|t| format!("{} x {}", t.gpus_per_node, t.accelerator))
    };
    let cases = [
        ("p4d.24xlarge", "8 x A100"),
        ("p4de.24xlarge", "8 x A100-80GB"),
        ("p5.48xlarge", "8 x H100"),
        ("p5e.48xlarge", "8 x H200"),
        ("p6-b200.48xlarge", "8 x B200"),
        ("g5.xlarge", "1 x A10G"),
        ("g6.xlarge", "1 x L4"),
        ("g6e.xlarge", "1 x L40S"),
        ("g4dn.xlarge", "1 x T4"),
        ("p3dn.24xlarge", "8 x V100-32GB"),
    ];
    for (instance_type, expected) in cases {
        assert_eq!(by_type(instance_type).as_deref(), Some(expected), "{instance_type} in {names:#?}");
    }
    // B300 and the RTX PRO cards are not (yet) in SkyPilot's canonical list: they keep
    // EC2's spelling until dibs-core's alias table names them.
    let expected = [
        "A100 40 GiB -> A100",
        "A100 80 GiB -> A100-80GB",
        "A10G 22 GiB -> A10G",
        "B200 179 GiB -> B200",
        "B300 268 GiB -> B300",
        "H100 80 GiB -> H100",
        "H200 141 GiB -> H200",
        "L4 22 GiB -> L4",
        "L40S 44 GiB -> L40S",
        "RTX PRO 4500 32 GiB -> RTX PRO 4500",
        "RTX PRO Server 6000 96 GiB -> RTX PRO Server 6000",
        "T4 16 GiB -> T4",
        "T4g 16 GiB -> T4g",
        "V100 32 GiB -> V100-32GB",
    ];
    assert_eq!(names, expected);
}
