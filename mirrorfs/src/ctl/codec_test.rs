//! Codec tests: every request's line, the legacy `status`, malformed lines
//! answered with an error that names the fix, and the flat status object's
//! field names as a controller reads them.

use pretty_assertions::assert_eq;
use serde_json::{json, Value};

use super::*;

fn mount_status() -> Status {
    Status {
        version: VERSION,
        role: Role::Prim,
        in_sync: true,
        connected: true,
        dirty_files: 0,
        dirty_bytes: 0,
        resync: None,
        generation: Some("00000000000000ab".into()),
        history: vec!["00000000000000ab".into(), "0000000000000001".into()],
        stalled: false,
        pid: 42,
        last_error: None,
        peer: Some("10.0.0.2:7411".into()),
        peer_node: "node2".into(),
        role_secs: 1.5,
        ops_in_flight: Some(0),
        alone_secs_left: None,
        held_ops: None,
        primary_connected: None,
        last_applied: None,
        resync_running: None,
        inconsistent: None,
        ack: Some(AckMode::EachOp),
    }
}

fn serve_status() -> Status {
    Status {
        role: Role::Second,
        in_sync: false,
        peer: None,
        peer_node: "node1".into(),
        ops_in_flight: None,
        primary_connected: Some(false),
        last_applied: Some(None),
        resync_running: Some(false),
        inconsistent: Some(true),
        ack: None,
        ..mount_status()
    }
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect()
}

#[test]
fn every_request_encodes_to_one_versioned_line_and_back() {
    let requests = [
        (Request::Status, r#"{"version":1,"request":"status"}"#),
        (Request::Watch, r#"{"version":1,"request":"watch"}"#),
        (
            Request::Alone { seconds: 5.0 },
            r#"{"version":1,"request":"alone","seconds":5.0}"#,
        ),
        (Request::Fence, r#"{"version":1,"request":"fence"}"#),
        (Request::Unfence, r#"{"version":1,"request":"unfence"}"#),
        (
            Request::Latency { reset: false },
            r#"{"version":1,"request":"latency"}"#,
        ),
        (
            Request::Latency { reset: true },
            r#"{"version":1,"request":"latency","reset":true}"#,
        ),
    ];
    for (request, line) in requests {
        assert_eq!(request.encode(), line);
        assert_eq!(Request::decode(line), Ok(request.clone()));
        assert_eq!(Request::decode(&format!("{line}\n")), Ok(request.clone()));
        // The serde form (for crates that embed requests) is the same
        // object without the version.
        let mut v: Value = serde_json::from_str(line).unwrap();
        v.as_object_mut().unwrap().remove("version");
        assert_eq!(serde_json::to_value(&request).unwrap(), v);
    }
    // Integers are seconds too, and key order does not matter.
    assert_eq!(
        Request::decode(r#"{"seconds":2,"request":"alone","version":1}"#),
        Ok(Request::Alone { seconds: 2.0 })
    );
    assert_eq!(
        Request::decode(r#"{"version":1,"request":"alone","seconds":0.25}"#),
        Ok(Request::Alone { seconds: 0.25 })
    );
}

#[test]
fn a_latency_answer_is_its_own_shape() {
    let a = latency::answer(false);
    let line = serde_json::to_string(&a).unwrap();
    assert_eq!(Answer::decode(&line).unwrap(), Answer::Latency(a));
}

#[test]
fn the_legacy_bare_status_line_is_a_status_request() {
    assert_eq!(Request::decode("status"), Ok(Request::Status));
    assert_eq!(Request::decode("status\n"), Ok(Request::Status));
    assert_eq!(Request::decode("  status \r\n"), Ok(Request::Status));
    assert!(
        Request::decode("watch").is_err(),
        "only status was one word"
    );
}

#[test]
fn malformed_requests_are_errors_that_name_the_fix() {
    let cases: &[(&str, &str)] = &[
        ("garbage", "send one JSON object per line"),
        ("[1,2]", "is not a JSON object"),
        (r#"{"request":"status"}"#, "add \"version\":1"),
        (r#"{"version":2,"request":"status"}"#, "version 2"),
        (
            r#"{"version":"1","request":"status"}"#,
            "send \"version\":1",
        ),
        (r#"{"version":1}"#, "no \"request\""),
        (r#"{"version":1,"request":5}"#, "not a string"),
        (
            r#"{"version":1,"request":"reboot"}"#,
            "the requests are status, watch, alone",
        ),
        (
            r#"{"version":1,"request":"alone"}"#,
            "alone needs \"seconds\"",
        ),
        (
            r#"{"version":1,"request":"alone","seconds":"5"}"#,
            "not a number",
        ),
        (
            r#"{"version":1,"request":"alone","seconds":-1}"#,
            "between 0 and 3600",
        ),
        (
            r#"{"version":1,"request":"alone","seconds":0}"#,
            "between 0 and 3600",
        ),
        (
            r#"{"version":1,"request":"alone","seconds":1e9}"#,
            "between 0 and 3600",
        ),
        (
            r#"{"version":1,"request":"status","seconds":5}"#,
            "status takes no \"seconds\"",
        ),
        (
            r#"{"version":1,"request":"alone","seconds":5,"force":true}"#,
            "alone takes no \"force\"",
        ),
        (
            r#"{"version":1,"request":"latency","reset":"yes"}"#,
            "not true or false",
        ),
        (
            r#"{"version":1,"request":"latency","seconds":1}"#,
            "latency takes no \"seconds\"",
        ),
    ];
    for (line, want) in cases {
        let e = Request::decode(line).expect_err(line);
        let answer: Value = serde_json::from_str(&ErrorAnswer::encode(&e)).unwrap();
        assert_eq!(keys(&answer), ["error", "version"], "{line}");
        assert_eq!(answer["version"], 1);
        let msg = answer["error"].as_str().unwrap();
        assert!(msg.contains(want), "{line}: {msg:?} lacks {want:?}");
        assert_eq!(
            Answer::decode(&ErrorAnswer::encode(&e)).unwrap(),
            Answer::Error(e.to_string())
        );
    }
}

#[test]
fn a_mount_status_is_one_flat_object_with_these_fields() {
    let v = serde_json::to_value(mount_status()).unwrap();
    let mut want = vec![
        "version",
        "role",
        "in_sync",
        "connected",
        "dirty_files",
        "dirty_bytes",
        "resync",
        "generation",
        "history",
        "stalled",
        "pid",
        "last_error",
        "peer",
        "peer_node",
        "role_secs",
        "ops_in_flight",
        "ack",
    ];
    let mut got = keys(&v);
    want.sort_unstable();
    got.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(v["role"], "PRIM");
    assert_eq!(v["ack"], "each-op");
    let on_sync = Status {
        ack: Some(AckMode::OnSync),
        ..mount_status()
    };
    assert_eq!(serde_json::to_value(&on_sync).unwrap()["ack"], "on-sync");
    assert!(on_sync.render_text().contains("ack:         on-sync"));
    assert_eq!(v["resync"], Value::Null);
    assert_eq!(v["last_error"], Value::Null);
    assert_eq!(
        v["history"],
        json!(["00000000000000ab", "0000000000000001"])
    );
    // Under a controller: the grant (null: none) and the held ops.
    let held = Status {
        role: Role::Hold,
        alone_secs_left: Some(None),
        held_ops: Some(3),
        ..mount_status()
    };
    let v = serde_json::to_value(&held).unwrap();
    assert_eq!(v["role"], "HOLD");
    assert_eq!(v["alone_secs_left"], Value::Null);
    assert!(v.as_object().unwrap().contains_key("alone_secs_left"));
    assert_eq!(v["held_ops"], 3);
    let granted = Status {
        alone_secs_left: Some(Some(2.5)),
        ..held.clone()
    };
    for st in [mount_status(), held, granted] {
        let line = serde_json::to_string(&st).unwrap();
        assert_eq!(Answer::decode(&line).unwrap(), Answer::Status(Box::new(st)));
    }
}

#[test]
fn a_serve_status_has_the_secondary_fields() {
    let st = serve_status();
    let v = serde_json::to_value(&st).unwrap();
    for field in [
        "primary_connected",
        "last_applied",
        "resync_running",
        "inconsistent",
    ] {
        assert!(v.as_object().unwrap().contains_key(field), "{field}: {v}");
    }
    assert!(!v.as_object().unwrap().contains_key("ops_in_flight"));
    assert_eq!(v["role"], "SECOND");
    assert_eq!(v["last_applied"], Value::Null);
    assert_eq!(v["peer"], Value::Null);
    let applied = Status {
        last_applied: Some(Some(LastApplied {
            seq: 9,
            unix_secs: 1.5e9,
        })),
        ..st.clone()
    };
    let v = serde_json::to_value(&applied).unwrap();
    assert_eq!(v["last_applied"], json!({"seq": 9, "unix_secs": 1.5e9}));
    for st in [st, applied] {
        let line = serde_json::to_string(&st).unwrap();
        assert_eq!(Answer::decode(&line).unwrap(), Answer::Status(Box::new(st)));
    }
}

#[test]
fn roles_are_the_upper_case_names_operators_read() {
    for (role, name) in [
        (Role::Prim, "PRIM"),
        (Role::Resync, "RESYNC"),
        (Role::Alone, "ALONE"),
        (Role::Lost, "LOST"),
        (Role::Hold, "HOLD"),
        (Role::Fenced, "FENCED"),
        (Role::Second, "SECOND"),
    ] {
        assert_eq!(serde_json::to_value(role).unwrap(), name);
        assert_eq!(role.to_string(), name);
        assert_eq!(
            serde_json::from_value::<Role>(Value::from(name)).unwrap(),
            role
        );
    }
}

#[test]
fn the_text_status_shows_the_new_fields_when_present() {
    let text = mount_status().render_text();
    assert!(text.contains("role:        PRIM\n"), "{text}");
    assert!(text.contains("generation:  00000000000000ab\n"), "{text}");
    assert!(text.contains("history:     0000000000000001\n"), "{text}");
    assert!(text.contains("in sync:     yes\n"), "{text}");
    assert!(!text.contains("held ops"), "{text}");
    let held = Status {
        role: Role::Hold,
        alone_secs_left: Some(Some(2.5)),
        held_ops: Some(3),
        ..mount_status()
    }
    .render_text();
    assert!(held.contains("role:        HOLD (peer lost"), "{held}");
    assert!(held.contains("alone grant: 2.5 s left"), "{held}");
    assert!(held.contains("held ops:    3"), "{held}");
    let serve = serve_status().render_text();
    assert!(serve.contains("role:        SECOND"), "{serve}");
    assert!(serve.contains("consistent:  NO"), "{serve}");
    assert!(serve.contains("last applied: nothing yet"), "{serve}");
}
