//! The consumer group APIs over a real socket, every advertised version: the KIP-394
//! handshake, a two-member rebalance, assignments, heartbeats during a rebalance,
//! commits and fetches with metadata, the admin APIs, and offsets surviving a restart.

mod common;

use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use sluice_broker::api::SUPPORTED_APIS;
use sluice_broker::BrokerConfig;

use common::{create_topic, name, versions, Client};

fn s(value: &str) -> StrBytes {
    StrBytes::from_string(value.to_string())
}

fn gid(value: &str) -> GroupId {
    GroupId(s(value))
}

const NONE: i16 = 0;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const OFFSET_METADATA_TOO_LARGE: i16 = 12;
const GROUP_ID_NOT_FOUND: i16 = 69;
const NON_EMPTY_GROUP: i16 = 68;
const MEMBER_ID_REQUIRED: i16 = 79;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;

fn config(dir: &std::path::Path) -> BrokerConfig {
    BrokerConfig::from_pairs([
        ("listeners", "127.0.0.1:0".to_string()),
        ("log.dirs", dir.display().to_string()),
        ("group.initial.rebalance.delay.ms", "0".to_string()),
        ("offsets.topic.num.partitions", "3".to_string()),
    ])
    .unwrap()
}

async fn start() -> (sluice_broker::RunningBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let broker = sluice_broker::start(config(dir.path())).await.unwrap();
    (broker, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_coordinator_every_version() {
    let (broker, _dir) = start().await;
    let mut client = Client::connect(broker.local_addr).await;
    for version in versions(ApiKey::FindCoordinator) {
        let mut request = FindCoordinatorRequest::default();
        if version >= 4 {
            request = request.with_coordinator_keys(vec![s("g1"), s("g2")]);
        } else {
            request = request.with_key(s("g1"));
        }
        let response: FindCoordinatorResponse = client
            .call(ApiKey::FindCoordinator, version, &request)
            .await;
        if version >= 4 {
            assert_eq!(response.coordinators.len(), 2);
            for c in &response.coordinators {
                assert_eq!(c.error_code, NONE);
                assert_eq!(c.node_id.0, 1);
                assert_eq!(c.host.as_str(), "127.0.0.1");
            }
            assert_eq!(response.coordinators[1].key.as_str(), "g2");
        } else {
            assert_eq!(response.error_code, NONE, "v{version}");
            assert_eq!(response.node_id.0, 1);
        }
        if version >= 1 {
            // Transaction coordinators do not exist yet.
            let mut request = FindCoordinatorRequest::default().with_key_type(1);
            if version >= 4 {
                request = request.with_coordinator_keys(vec![s("tx")]);
            } else {
                request = request.with_key(s("tx"));
            }
            let response: FindCoordinatorResponse = client
                .call(ApiKey::FindCoordinator, version, &request)
                .await;
            let code = if version >= 4 {
                response.coordinators[0].error_code
            } else {
                response.error_code
            };
            assert_eq!(code, COORDINATOR_NOT_AVAILABLE);
        }
    }
    broker.shutdown().await;
}

fn join_request(version: i16, group: &str, member_id: &str) -> JoinGroupRequest {
    let mut request = JoinGroupRequest::default()
        .with_group_id(gid(group))
        .with_session_timeout_ms(10_000)
        .with_member_id(s(member_id))
        .with_protocol_type(s("consumer"))
        .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
        )
        .with_name(s("range"))
        .with_metadata(Bytes::from(format!("meta-{member_id}")))]);
    if version >= 1 {
        request = request.with_rebalance_timeout_ms(10_000);
    }
    request
}

/// Joins (with the MEMBER_ID_REQUIRED round trip from v4); returns the final answer.
async fn join(client: &mut Client, version: i16, group: &str) -> JoinGroupResponse {
    let first: JoinGroupResponse = client
        .call(
            ApiKey::JoinGroup,
            version,
            &join_request(version, group, ""),
        )
        .await;
    if version < 4 {
        return first;
    }
    assert_eq!(first.error_code, MEMBER_ID_REQUIRED, "v{version}");
    assert!(first.member_id.starts_with("socket-test-"));
    let id = first.member_id.to_string();
    client
        .call(
            ApiKey::JoinGroup,
            version,
            &join_request(version, group, &id),
        )
        .await
}

fn sync_request(
    version: i16,
    group: &str,
    generation: i32,
    member: &str,
    assignments: Vec<(String, &'static [u8])>,
) -> SyncGroupRequest {
    let mut request = SyncGroupRequest::default()
        .with_group_id(gid(group))
        .with_generation_id(generation)
        .with_member_id(s(member))
        .with_assignments(
            assignments
                .into_iter()
                .map(|(m, a)| {
                    sync_group_request::SyncGroupRequestAssignment::default()
                        .with_member_id(s(&m))
                        .with_assignment(Bytes::from_static(a))
                })
                .collect(),
        );
    if version >= 5 {
        request = request
            .with_protocol_type(Some(s("consumer")))
            .with_protocol_name(Some(s("range")));
    }
    request
}

async fn heartbeat(
    client: &mut Client,
    version: i16,
    group: &str,
    generation: i32,
    member: &str,
) -> i16 {
    let request = HeartbeatRequest::default()
        .with_group_id(gid(group))
        .with_generation_id(generation)
        .with_member_id(s(member));
    let response: HeartbeatResponse = client.call(ApiKey::Heartbeat, version, &request).await;
    response.error_code
}

/// The whole protocol at one JoinGroup version (and the matching versions of the others).
async fn rebalance_scenario(addr: std::net::SocketAddr, version: i16) {
    let sync_v = version.min(*versions(ApiKey::SyncGroup).end());
    let heartbeat_v = version.min(*versions(ApiKey::Heartbeat).end());
    let leave_v = version.min(*versions(ApiKey::LeaveGroup).end());
    let group = format!("group-v{version}");
    let mut a = Client::connect(addr).await;
    // A alone: leader of generation 1 with itself as the only member.
    let join_a = join(&mut a, version, &group).await;
    assert_eq!(join_a.error_code, NONE, "v{version}");
    let member_a = join_a.member_id.to_string();
    assert_eq!(join_a.leader, join_a.member_id);
    assert_eq!(join_a.members.len(), 1);
    assert_eq!(join_a.generation_id, 1);
    if version >= 7 {
        assert_eq!(join_a.protocol_type.as_deref(), Some("consumer"));
    }
    assert_eq!(join_a.protocol_name.as_deref(), Some("range"));
    let sync: SyncGroupResponse = a
        .call(
            ApiKey::SyncGroup,
            sync_v,
            &sync_request(
                sync_v,
                &group,
                1,
                &member_a,
                vec![(member_a.clone(), b"all")],
            ),
        )
        .await;
    assert_eq!(sync.error_code, NONE);
    assert_eq!(&sync.assignment[..], b"all");
    assert_eq!(
        heartbeat(&mut a, heartbeat_v, &group, 1, &member_a).await,
        NONE
    );

    // B joins on its own connection: its answer waits for the rebalance.
    let group_b = group.clone();
    let b_task = tokio::spawn(async move {
        let mut b = Client::connect(addr).await;
        let response = join(&mut b, version, &group_b).await;
        (b, response)
    });
    // A learns about the rebalance from its heartbeat, then rejoins.
    let mut rebalancing = false;
    for _ in 0..100 {
        match heartbeat(&mut a, heartbeat_v, &group, 1, &member_a).await {
            REBALANCE_IN_PROGRESS => {
                rebalancing = true;
                break;
            }
            NONE => tokio::time::sleep(Duration::from_millis(20)).await,
            other => panic!("heartbeat v{heartbeat_v}: {other}"),
        }
    }
    assert!(rebalancing, "v{version}: heartbeat reports the rebalance");
    let join_a: JoinGroupResponse = a
        .call(
            ApiKey::JoinGroup,
            version,
            &join_request(version, &group, &member_a),
        )
        .await;
    let (mut b, join_b) = b_task.await.unwrap();
    assert_eq!(join_a.error_code, NONE);
    assert_eq!(join_b.error_code, NONE);
    assert_eq!(join_a.generation_id, 2);
    assert_eq!(join_b.generation_id, 2);
    assert_eq!(join_a.leader.as_str(), member_a, "the leader is kept");
    assert_eq!(join_b.leader.as_str(), member_a);
    assert_eq!(join_a.members.len(), 2);
    assert!(join_b.members.is_empty());
    let member_b = join_b.member_id.to_string();
    let b_meta = join_a
        .members
        .iter()
        .find(|m| m.member_id.as_str() == member_b)
        .unwrap();
    // The metadata B sent (it names the member id B joined with).
    let b_sent = if version >= 4 { member_b.as_str() } else { "" };
    assert_eq!(&b_meta.metadata[..], format!("meta-{b_sent}").as_bytes());

    // B's sync waits for the leader's; each gets its own assignment.
    let group_b = group.clone();
    let b_id = member_b.clone();
    let b_sync = tokio::spawn(async move {
        let response: SyncGroupResponse = b
            .call(
                ApiKey::SyncGroup,
                sync_v,
                &sync_request(sync_v, &group_b, 2, &b_id, vec![]),
            )
            .await;
        (b, response)
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let sync_a: SyncGroupResponse = a
        .call(
            ApiKey::SyncGroup,
            sync_v,
            &sync_request(
                sync_v,
                &group,
                2,
                &member_a,
                vec![(member_a.clone(), b"part-0"), (member_b.clone(), b"part-1")],
            ),
        )
        .await;
    let (mut b, sync_b) = b_sync.await.unwrap();
    assert_eq!(sync_a.error_code, NONE);
    assert_eq!(&sync_a.assignment[..], b"part-0");
    assert_eq!(sync_b.error_code, NONE);
    assert_eq!(&sync_b.assignment[..], b"part-1");
    if sync_v >= 5 {
        assert_eq!(sync_b.protocol_name.as_deref(), Some("range"));
    }
    assert_eq!(
        heartbeat(&mut b, heartbeat_v, &group, 2, &member_b).await,
        NONE
    );
    assert_eq!(
        heartbeat(&mut b, heartbeat_v, &group, 1, &member_b).await,
        ILLEGAL_GENERATION
    );
    assert_eq!(
        heartbeat(&mut b, heartbeat_v, &group, 2, "nobody").await,
        UNKNOWN_MEMBER_ID
    );

    // B leaves; A must rejoin and is alone again.
    let leave = if leave_v >= 3 {
        LeaveGroupRequest::default()
            .with_group_id(gid(&group))
            .with_members(vec![
                leave_group_request::MemberIdentity::default().with_member_id(s(&member_b))
            ])
    } else {
        LeaveGroupRequest::default()
            .with_group_id(gid(&group))
            .with_member_id(s(&member_b))
    };
    let left: LeaveGroupResponse = b.call(ApiKey::LeaveGroup, leave_v, &leave).await;
    assert_eq!(left.error_code, NONE);
    if leave_v >= 3 {
        assert_eq!(left.members.len(), 1);
        assert_eq!(left.members[0].error_code, NONE);
    }
    assert_eq!(
        heartbeat(&mut a, heartbeat_v, &group, 2, &member_a).await,
        REBALANCE_IN_PROGRESS
    );
    let again: LeaveGroupResponse = b.call(ApiKey::LeaveGroup, leave_v, &leave).await;
    let code = if leave_v >= 3 {
        again.members[0].error_code
    } else {
        again.error_code
    };
    assert_eq!(code, UNKNOWN_MEMBER_ID);
    let join_a: JoinGroupResponse = a
        .call(
            ApiKey::JoinGroup,
            version,
            &join_request(version, &group, &member_a),
        )
        .await;
    assert_eq!(join_a.generation_id, 3);
    assert_eq!(join_a.members.len(), 1);
    // An unknown non-empty member id is refused.
    let unknown: JoinGroupResponse = a
        .call(
            ApiKey::JoinGroup,
            version,
            &join_request(version, &group, "ghost"),
        )
        .await;
    assert_eq!(unknown.error_code, UNKNOWN_MEMBER_ID);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_every_version() {
    let (broker, _dir) = start().await;
    for version in versions(ApiKey::JoinGroup) {
        rebalance_scenario(broker.local_addr, version).await;
    }
    // Every version of SyncGroup/Heartbeat/LeaveGroup was used by the scenarios.
    assert!(versions(ApiKey::SyncGroup).end() <= versions(ApiKey::JoinGroup).end());
    assert!(versions(ApiKey::Heartbeat).end() <= versions(ApiKey::JoinGroup).end());
    assert!(versions(ApiKey::LeaveGroup).end() <= versions(ApiKey::JoinGroup).end());
    broker.shutdown().await;
}

fn commit_request(
    _version: i16,
    group: &str,
    generation: i32,
    member: &str,
    topic: &str,
    offsets: &[(i32, i64, Option<&str>)],
) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(gid(group))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member))
        .with_topics(vec![
            offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(name(topic))
                .with_partitions(
                    offsets
                        .iter()
                        .map(|(p, o, m)| {
                            offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_partition_index(*p)
                                .with_committed_offset(*o)
                                .with_committed_metadata(m.map(s))
                        })
                        .collect(),
                ),
        ])
}

/// (partition, offset, metadata, error) of one group's topic; `None` topics = all.
async fn fetch_offsets(
    client: &mut Client,
    version: i16,
    group: &str,
    topics: Option<Vec<(&str, Vec<i32>)>>,
) -> Vec<(String, i32, i64, String, i16)> {
    let mut out = Vec::new();
    if version >= 8 {
        let request = OffsetFetchRequest::default().with_groups(vec![
            offset_fetch_request::OffsetFetchRequestGroup::default()
                .with_group_id(gid(group))
                .with_topics(topics.map(|topics| {
                    topics
                        .into_iter()
                        .map(|(t, ps)| {
                            offset_fetch_request::OffsetFetchRequestTopics::default()
                                .with_name(name(t))
                                .with_partition_indexes(ps)
                        })
                        .collect()
                })),
        ]);
        let response: OffsetFetchResponse =
            client.call(ApiKey::OffsetFetch, version, &request).await;
        assert_eq!(response.groups.len(), 1);
        assert_eq!(response.groups[0].error_code, NONE);
        for t in &response.groups[0].topics {
            for p in &t.partitions {
                out.push((
                    t.name.to_string(),
                    p.partition_index,
                    p.committed_offset,
                    p.metadata
                        .as_deref()
                        .map(|m| m.to_string())
                        .unwrap_or_default(),
                    p.error_code,
                ));
            }
        }
    } else {
        let request = OffsetFetchRequest::default()
            .with_group_id(gid(group))
            .with_topics(topics.map(|topics| {
                topics
                    .into_iter()
                    .map(|(t, ps)| {
                        offset_fetch_request::OffsetFetchRequestTopic::default()
                            .with_name(name(t))
                            .with_partition_indexes(ps)
                    })
                    .collect()
            }));
        let response: OffsetFetchResponse =
            client.call(ApiKey::OffsetFetch, version, &request).await;
        assert_eq!(response.error_code, NONE);
        for t in &response.topics {
            for p in &t.partitions {
                out.push((
                    t.name.to_string(),
                    p.partition_index,
                    p.committed_offset,
                    p.metadata
                        .as_deref()
                        .map(|m| m.to_string())
                        .unwrap_or_default(),
                    p.error_code,
                ));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_every_version_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = sluice_broker::start(config(dir.path())).await.unwrap();
    let mut client = Client::connect(broker.local_addr).await;
    create_topic(&mut client, "orders", 2).await;
    for version in versions(ApiKey::OffsetCommit) {
        let group = format!("simple-v{version}");
        let metadata = format!("meta v{version} ✓ {{\"k\": 1}}");
        let request = commit_request(
            version,
            &group,
            -1,
            "",
            "orders",
            &[(0, 100 + i64::from(version), Some(&metadata)), (1, 7, None)],
        );
        let response: OffsetCommitResponse =
            client.call(ApiKey::OffsetCommit, version, &request).await;
        let codes: Vec<i16> = response.topics[0]
            .partitions
            .iter()
            .map(|p| p.error_code)
            .collect();
        assert_eq!(codes, vec![NONE, NONE], "v{version}");
        // Too much metadata; an unknown partition.
        let big = "x".repeat(4097);
        let request = commit_request(
            version,
            &group,
            -1,
            "",
            "orders",
            &[(0, 1, Some(&big)), (9, 1, None)],
        );
        let response: OffsetCommitResponse =
            client.call(ApiKey::OffsetCommit, version, &request).await;
        assert_eq!(
            response.topics[0].partitions[0].error_code,
            OFFSET_METADATA_TOO_LARGE
        );
        assert_eq!(response.topics[0].partitions[1].error_code, 3);
        // A generation for a group that does not exist: a stale member.
        let request = commit_request(version, "no-such-group", 3, "m", "orders", &[(0, 1, None)]);
        let response: OffsetCommitResponse =
            client.call(ApiKey::OffsetCommit, version, &request).await;
        assert_eq!(
            response.topics[0].partitions[0].error_code,
            ILLEGAL_GENERATION
        );
    }
    for version in versions(ApiKey::OffsetFetch) {
        for commit_v in versions(ApiKey::OffsetCommit) {
            let group = format!("simple-v{commit_v}");
            let found = fetch_offsets(
                &mut client,
                version,
                &group,
                Some(vec![("orders", vec![0, 1])]),
            )
            .await;
            assert_eq!(
                found,
                vec![
                    (
                        "orders".to_string(),
                        0,
                        100 + i64::from(commit_v),
                        format!("meta v{commit_v} ✓ {{\"k\": 1}}"),
                        NONE
                    ),
                    ("orders".to_string(), 1, 7, String::new(), NONE),
                ],
                "fetch v{version}"
            );
            if version >= 2 {
                let all = fetch_offsets(&mut client, version, &group, None).await;
                assert_eq!(all.len(), 2, "all committed, fetch v{version}");
            }
        }
        // Unknown group, unknown partition: -1 and no error.
        let unknown = fetch_offsets(
            &mut client,
            version,
            "never-seen",
            Some(vec![("orders", vec![0]), ("nothing", vec![3])]),
        )
        .await;
        assert_eq!(unknown.len(), 2);
        for (_, _, offset, metadata, error) in unknown {
            assert_eq!(
                (offset, metadata.as_str(), error),
                (-1, "", NONE),
                "v{version}"
            );
        }
    }
    // Commits by a live member are checked against its generation.
    let mut a = Client::connect(broker.local_addr).await;
    let joined = join(&mut a, 9, "live").await;
    let member = joined.member_id.to_string();
    let response: OffsetCommitResponse = a
        .call(
            ApiKey::OffsetCommit,
            8,
            &commit_request(8, "live", 1, &member, "orders", &[(0, 5, None)]),
        )
        .await;
    assert_eq!(
        response.topics[0].partitions[0].error_code, REBALANCE_IN_PROGRESS,
        "before sync"
    );
    let _: SyncGroupResponse = a
        .call(
            ApiKey::SyncGroup,
            5,
            &sync_request(5, "live", 1, &member, vec![]),
        )
        .await;
    for (generation, member_id, code) in [
        (1, member.as_str(), NONE),
        (0, member.as_str(), ILLEGAL_GENERATION),
        (1, "other", UNKNOWN_MEMBER_ID),
        (-1, "", UNKNOWN_MEMBER_ID),
    ] {
        let response: OffsetCommitResponse = a
            .call(
                ApiKey::OffsetCommit,
                8,
                &commit_request(8, "live", generation, member_id, "orders", &[(0, 5, None)]),
            )
            .await;
        assert_eq!(
            response.topics[0].partitions[0].error_code, code,
            "{generation} {member_id}"
        );
    }
    drop(a);
    drop(client);
    broker.shutdown().await;

    // Restart on the same directory: offsets are back, the groups are Empty.
    let broker = sluice_broker::start(config(dir.path())).await.unwrap();
    let mut client = Client::connect(broker.local_addr).await;
    let found = fetch_offsets(&mut client, 8, "simple-v8", Some(vec![("orders", vec![0])])).await;
    assert_eq!(found[0].2, 108);
    assert_eq!(found[0].3, "meta v8 ✓ {\"k\": 1}");
    let found = fetch_offsets(&mut client, 8, "live", None).await;
    assert_eq!(found[0].2, 5);
    let listed: ListGroupsResponse = client
        .call(ApiKey::ListGroups, 4, &ListGroupsRequest::default())
        .await;
    let live = listed
        .groups
        .iter()
        .find(|g| g.group_id.as_str() == "live")
        .expect("group listed after restart");
    assert_eq!(live.group_state.as_str(), "Empty");
    assert_eq!(live.protocol_type.as_str(), "consumer");
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_admin_every_version() {
    let (broker, _dir) = start().await;
    let mut client = Client::connect(broker.local_addr).await;
    create_topic(&mut client, "events", 1).await;
    // One stable group with a member, one empty group with offsets.
    let mut member_client = Client::connect(broker.local_addr).await;
    let joined = join(&mut member_client, 9, "busy").await;
    let member = joined.member_id.to_string();
    let _: SyncGroupResponse = member_client
        .call(
            ApiKey::SyncGroup,
            5,
            &sync_request(5, "busy", 1, &member, vec![(member.clone(), b"assigned")]),
        )
        .await;
    for group in ["idle-a", "idle-b", "idle-c", "idle-d"] {
        let response: OffsetCommitResponse = client
            .call(
                ApiKey::OffsetCommit,
                8,
                &commit_request(8, group, -1, "", "events", &[(0, 1, Some("m"))]),
            )
            .await;
        assert_eq!(response.topics[0].partitions[0].error_code, NONE);
    }
    for version in versions(ApiKey::ListGroups) {
        let response: ListGroupsResponse = client
            .call(ApiKey::ListGroups, version, &ListGroupsRequest::default())
            .await;
        assert_eq!(response.error_code, NONE);
        assert_eq!(response.groups.len(), 5, "v{version}");
        if version >= 4 {
            let request = ListGroupsRequest::default().with_states_filter(vec![s("Stable")]);
            let stable: ListGroupsResponse =
                client.call(ApiKey::ListGroups, version, &request).await;
            assert_eq!(stable.groups.len(), 1);
            assert_eq!(stable.groups[0].group_id.as_str(), "busy");
            assert_eq!(stable.groups[0].group_state.as_str(), "Stable");
        }
    }
    for version in versions(ApiKey::DescribeGroups) {
        let request = DescribeGroupsRequest::default().with_groups(vec![
            gid("busy"),
            gid("idle-a"),
            gid("unknown"),
        ]);
        let response: DescribeGroupsResponse =
            client.call(ApiKey::DescribeGroups, version, &request).await;
        let busy = &response.groups[0];
        assert_eq!(busy.error_code, NONE);
        assert_eq!(busy.group_state.as_str(), "Stable");
        assert_eq!(busy.protocol_type.as_str(), "consumer");
        assert_eq!(busy.protocol_data.as_str(), "range");
        assert_eq!(busy.members.len(), 1);
        assert_eq!(busy.members[0].member_id.as_str(), member);
        assert_eq!(busy.members[0].client_id.as_str(), "socket-test");
        assert_eq!(&busy.members[0].member_assignment[..], b"assigned");
        assert_eq!(
            &busy.members[0].member_metadata[..],
            format!("meta-{member}").as_bytes()
        );
        assert_eq!(response.groups[1].group_state.as_str(), "Empty");
        assert_eq!(response.groups[2].group_state.as_str(), "Dead");
    }
    // OffsetDelete: allowed on an empty group, refused for a subscribed topic... the
    // "busy" group's metadata is not a consumer subscription, so it is not subscribed.
    let request = OffsetDeleteRequest::default()
        .with_group_id(gid("idle-a"))
        .with_topics(vec![
            offset_delete_request::OffsetDeleteRequestTopic::default()
                .with_name(name("events"))
                .with_partitions(vec![
                    offset_delete_request::OffsetDeleteRequestPartition::default()
                        .with_partition_index(0),
                ]),
        ]);
    let response: OffsetDeleteResponse = client.call(ApiKey::OffsetDelete, 0, &request).await;
    assert_eq!(response.error_code, NONE);
    assert_eq!(response.topics[0].partitions[0].error_code, NONE);
    let found = fetch_offsets(&mut client, 8, "idle-a", Some(vec![("events", vec![0])])).await;
    assert_eq!(found[0].2, -1);
    let mut unknown = request.clone();
    unknown.group_id = gid("nope");
    let response: OffsetDeleteResponse = client.call(ApiKey::OffsetDelete, 0, &unknown).await;
    assert_eq!(response.error_code, GROUP_ID_NOT_FOUND);
    // A group whose member subscribes (consumer protocol metadata) to the topic.
    let mut subscribed_request = join_request(9, "subscribed", "");
    let mut metadata = vec![0u8, 1, 0, 0, 0, 1, 0, 6];
    metadata.extend_from_slice(b"events");
    metadata.extend_from_slice(&[0, 0, 0, 0]);
    subscribed_request.protocols[0].metadata = Bytes::from(metadata);
    subscribed_request.group_instance_id = Some(s("static-1"));
    let joined: JoinGroupResponse = member_client
        .call(ApiKey::JoinGroup, 9, &subscribed_request)
        .await;
    assert_eq!(joined.error_code, NONE);
    let mut request = request.clone();
    request.group_id = gid("subscribed");
    let response: OffsetDeleteResponse = client.call(ApiKey::OffsetDelete, 0, &request).await;
    assert_eq!(
        response.topics[0].partitions[0].error_code,
        GROUP_SUBSCRIBED_TO_TOPIC
    );

    for version in versions(ApiKey::DeleteGroups) {
        let idle = ["idle-b", "idle-c", "idle-d"][version as usize];
        let request = DeleteGroupsRequest::default().with_groups_names(vec![
            gid(idle),
            gid("busy"),
            gid("nope"),
        ]);
        let response: DeleteGroupsResponse =
            client.call(ApiKey::DeleteGroups, version, &request).await;
        let codes: Vec<i16> = response.results.iter().map(|r| r.error_code).collect();
        assert_eq!(
            codes,
            vec![NONE, NON_EMPTY_GROUP, GROUP_ID_NOT_FOUND],
            "v{version}"
        );
        let found = fetch_offsets(&mut client, 8, idle, Some(vec![("events", vec![0])])).await;
        assert_eq!(found[0].2, -1);
    }
    broker.shutdown().await;
}

#[test]
fn every_group_api_is_advertised() {
    for key in [
        ApiKey::FindCoordinator,
        ApiKey::JoinGroup,
        ApiKey::SyncGroup,
        ApiKey::Heartbeat,
        ApiKey::LeaveGroup,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::ListGroups,
        ApiKey::DescribeGroups,
        ApiKey::DeleteGroups,
        ApiKey::OffsetDelete,
    ] {
        assert!(SUPPORTED_APIS.iter().any(|(k, _, _)| *k == key), "{key:?}");
    }
}
