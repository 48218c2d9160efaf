//! Codec tests: every request's exact line and back, the defaults a script
//! may leave out, the refusals of `testdata/request_errors.txt` word for
//! word, every answer line and back, the exit codes, and random lines that
//! never make the decoder panic.

use pretty_assertions::assert_eq;
use proptest::prelude::*;
use serde_json::Value;

use super::*;

fn state() -> State {
    State::new(
        "node1",
        vec![ModuleStatus {
            module: "apache".into(),
            node: "node1".into(),
            peer: "node2".into(),
            state: "PRIM".into(),
            ready: true,
            reason: "peer in sync".into(),
            since_unix: 1_764_924_122.5,
            step: None,
            in_sync: Some(true),
            resync: Some(Resync {
                files_done: 1,
                files_left: 2,
                bytes_sent: 3,
                eta_secs: None,
            }),
            peer_state: Some("SECOND".into()),
            peer_ready: Some(true),
            peer_reachable: true,
            networks: vec![NetworkStatus {
                addr: "10.77.0.2".into(),
                heard_secs_ago: Some(0.25),
                rtt_ms: None,
            }],
            witness: Some(WitnessStatus {
                addr: "10.77.0.3:7430".into(),
                reachable: true,
                lease_secs_left: None,
                refused: Some("held by node2".into()),
            }),
            vip: Some("10.77.0.100/24 on eth0".into()),
            dirs: vec![DirStatus {
                mount: "/srv/a".into(),
                backing: "/var/lib/a".into(),
                role: Some("PRIM".into()),
                generation: None,
                consistent: Some(true),
                dirty_bytes: None,
                ops_in_flight: None,
            }],
            last_transition: Some(TransitionStatus {
                from: "WAIT".into(),
                to: "PRIM".into(),
                reason: "newest data".into(),
                at_unix: 1.0,
            }),
            last_failover: Some(FailoverStatus {
                to: "node1".into(),
                cause: "node2 lost".into(),
                at_unix: 2.0,
            }),
            config_mismatch: false,
            farm: None,
        }],
    )
}

#[test]
fn every_request_encodes_to_one_versioned_line_and_back() {
    let m = || "apache".to_owned();
    let requests = [
        (
            Request::State { module: None },
            r#"{"version":1,"request":"state","module":null}"#,
        ),
        (
            Request::State { module: Some(m()) },
            r#"{"version":1,"request":"state","module":"apache"}"#,
        ),
        (
            Request::Start { module: m() },
            r#"{"version":1,"request":"start","module":"apache"}"#,
        ),
        (
            Request::Stop { module: m() },
            r#"{"version":1,"request":"stop","module":"apache"}"#,
        ),
        (
            Request::Restart { module: m() },
            r#"{"version":1,"request":"restart","module":"apache"}"#,
        ),
        (
            Request::Swap { module: m() },
            r#"{"version":1,"request":"swap","module":"apache"}"#,
        ),
        (
            Request::Prim { module: m() },
            r#"{"version":1,"request":"prim","module":"apache"}"#,
        ),
        (
            Request::Second { module: m() },
            r#"{"version":1,"request":"second","module":"apache"}"#,
        ),
        (
            Request::Log {
                module: m(),
                follow: true,
                lines: 0,
            },
            r#"{"version":1,"request":"log","module":"apache","follow":true,"lines":0}"#,
        ),
    ];
    for (request, line) in &requests {
        assert_eq!(request.encode(), *line);
        assert_eq!(Request::decode(line).as_ref(), Ok(request));
        assert_eq!(
            Request::decode(&format!("{line}\r\n")).as_ref(),
            Ok(request)
        );
    }
    let names: Vec<_> = requests.iter().map(|(r, _)| r.name()).collect();
    assert_eq!(
        names,
        ["state", "state", "start", "stop", "restart", "swap", "prim", "second", "log"]
    );
    let orders: Vec<_> = requests
        .iter()
        .filter(|(r, _)| r.is_order())
        .map(|(r, _)| r.name())
        .collect();
    assert_eq!(orders, order::NAMES);
}

#[test]
fn a_script_may_leave_out_the_optional_fields_in_any_order() {
    assert_eq!(
        Request::decode(r#"{"request":"state","version":1}"#),
        Ok(Request::State { module: None })
    );
    assert_eq!(
        Request::decode(r#"{"module":"web","request":"log","version":1}"#),
        Ok(Request::Log {
            module: "web".into(),
            follow: false,
            lines: log::DEFAULT_LINES,
        })
    );
    assert_eq!(
        Request::decode(
            r#"{"version":1,"request":"log","module":"web","follow":null,"lines":100000}"#
        ),
        Ok(Request::Log {
            module: "web".into(),
            follow: false,
            lines: log::MAX_LINES,
        })
    );
    // A module name is passed on as it is: the daemon knows its modules.
    let odd = "ä \"quoted\"\n";
    let r = Request::Stop { module: odd.into() };
    assert_eq!(Request::decode(&r.encode()), Ok(r));
}

/// The cases of `testdata/request_errors.txt`: (line, want).
fn error_cases() -> Vec<(String, String)> {
    let text = include_str!("testdata/request_errors.txt");
    let mut cases = Vec::new();
    let mut line = None;
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        if let Some(rest) = l.strip_prefix("line: ") {
            assert!(line.is_none(), "two line: without a want: at {l:?}");
            line = Some(rest.to_owned());
        } else if let Some(want) = l.strip_prefix("want: ") {
            let line = line.take().expect("a want: after its line:");
            cases.push((line, want.to_owned()));
        } else {
            panic!("testdata/request_errors.txt: cannot read {l:?}");
        }
    }
    assert!(line.is_none(), "a line: without its want:");
    cases
}

#[test]
fn refused_requests_are_answered_with_these_exact_errors() {
    let cases = error_cases();
    assert!(cases.len() >= 20, "{} cases", cases.len());
    for (line, want) in cases {
        let e = Request::decode(&line).expect_err(&line);
        assert_eq!(e.to_string(), want, "for {line}");
        // The error line as the server writes it.
        let answer: Value = serde_json::from_str(&AnswerLine::error(&e).encode()).unwrap();
        assert_eq!(answer, serde_json::json!({"version": 1, "error": want}));
    }
}

#[test]
fn too_long_a_line_is_refused_before_it_is_parsed() {
    let long = format!(
        r#"{{"version":1,"request":"state","module":"{}"}}"#,
        "a".repeat(MAX_LINE)
    );
    assert_eq!(Request::decode(&long), Err(CtlError::TooLong));
    assert_eq!(
        CtlError::TooLong.to_string(),
        "request longer than 4096 bytes: send one JSON object per line"
    );
}

#[test]
fn every_answer_line_encodes_and_decodes() {
    let cases = [
        (
            AnswerLine::Done("apache: started".into()),
            r#"{"version":1,"ok":true,"message":"apache: started"}"#,
        ),
        (
            AnswerLine::Error("no module \"x\": the modules are apache".into()),
            r#"{"version":1,"error":"no module \"x\": the modules are apache"}"#,
        ),
        (
            AnswerLine::Log("08:42:02 start_prim: ok".into()),
            r#"{"version":1,"log":"08:42:02 start_prim: ok"}"#,
        ),
        (AnswerLine::End, r#"{"version":1,"end":true}"#),
    ];
    for (answer, line) in cases {
        assert_eq!(answer.encode(), line);
        assert_eq!(AnswerLine::decode(line), Ok(answer.clone()));
        let mut written = Vec::new();
        answer.write_to(&mut written).unwrap();
        assert_eq!(written, format!("{line}\n").into_bytes());
    }
    let s = AnswerLine::State(Box::new(state()));
    assert_eq!(AnswerLine::decode(&s.encode()), Ok(s));
}

#[test]
fn the_state_object_has_every_field_null_or_not() {
    let mut st = state();
    st.modules[0].witness = None;
    let v: Value = serde_json::from_str(&AnswerLine::State(Box::new(st)).encode()).unwrap();
    let mut top: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
    top.sort();
    assert_eq!(top, ["modules", "node", "version"]);
    let m = v["modules"][0].as_object().unwrap();
    let mut keys: Vec<_> = m.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = vec![
        "module",
        "node",
        "peer",
        "state",
        "ready",
        "reason",
        "since_unix",
        "step",
        "in_sync",
        "resync",
        "peer_state",
        "peer_ready",
        "peer_reachable",
        "networks",
        "witness",
        "vip",
        "dirs",
        "last_transition",
        "last_failover",
        "config_mismatch",
        "farm",
    ];
    want.sort_unstable();
    assert_eq!(keys, want);
    assert_eq!(m["witness"], Value::Null);
    assert_eq!(m["step"], Value::Null);
    assert_eq!(
        m["resync"],
        serde_json::json!({"files_done": 1, "files_left": 2, "bytes_sent": 3, "eta_secs": null})
    );
    assert_eq!(
        m["dirs"][0],
        serde_json::json!({"mount": "/srv/a", "backing": "/var/lib/a", "role": "PRIM",
            "generation": null, "consistent": true, "dirty_bytes": null, "ops_in_flight": null})
    );
}

#[test]
fn a_newer_daemons_extra_fields_are_ignored_and_other_versions_refused() {
    let mut v = serde_json::to_value(state()).unwrap();
    v["uptime"] = 5.into();
    v["modules"][0]["colour"] = "red".into();
    assert_eq!(
        AnswerLine::decode(&v.to_string()),
        Ok(AnswerLine::State(Box::new(state())))
    );
    let cases = [
        ("nope", "not JSON (expected ident at line 1 column 2)"),
        ("[]", "not a JSON object"),
        (r#"{"ok":true,"message":"x"}"#, "no \"version\""),
        (
            r#"{"version":2,"ok":true,"message":"x"}"#,
            "protocol version 2, this client speaks 1",
        ),
        (
            r#"{"version":1,"ok":true}"#,
            "\"message\" is missing, not a string",
        ),
        (r#"{"version":1,"log":3}"#, "\"log\" is 3, not a string"),
        (
            r#"{"version":1,"hello":1}"#,
            "none of \"ok\", \"error\", \"modules\", \"log\", \"end\" (keys: hello, version)",
        ),
    ];
    for (line, want) in cases {
        assert_eq!(
            AnswerLine::decode(line).map_err(|e| e.to_string()),
            Err(want.to_owned()),
            "{line}"
        );
    }
    let e = AnswerLine::decode(r#"{"version":1,"modules":3}"#).unwrap_err();
    assert!(e.to_string().starts_with("not a state: "), "{e}");
}

#[test]
fn exit_codes_tell_done_from_refused_and_a_transient_state_is_no_failure() {
    let mut waiting = state();
    waiting.modules[0].ready = false;
    waiting.modules[0].state = "WAIT".into();
    assert_eq!(exit_code(&Answer::State(Box::new(waiting))), 0);
    assert_eq!(exit_code(&Answer::Done("ok".into())), 0);
    assert_eq!(exit_code(&Answer::Log(vec![])), 0);
    assert_eq!(exit_code(&Answer::Error("no".into())), 2);
    assert_eq!(
        client::ClientError::Refused("no".into()).exit_code(),
        EXIT_ERROR
    );
    assert_eq!(client::ClientError::Follow.exit_code(), EXIT_UNREACHABLE);
}

#[test]
fn answers_render_for_the_terminal() {
    assert_eq!(
        Answer::Done("apache: started".into()).render_text(),
        "apache: started\n"
    );
    assert_eq!(Answer::Error("no".into()).render_text(), "error: no\n");
    assert_eq!(Answer::Log(vec![]).render_text(), "");
    assert_eq!(
        Answer::Log(vec!["a".into(), "b".into()]).render_text(),
        "a\nb\n"
    );
}

fn any_request() -> impl Strategy<Value = Request> {
    let module = "\\PC{0,40}";
    prop_oneof![
        proptest::option::of("\\PC{1,40}").prop_map(|module| Request::State { module }),
        "\\PC{1,40}".prop_map(|module| Request::Start { module }),
        "\\PC{1,40}".prop_map(|module| Request::Swap { module }),
        ("\\PC{1,40}", any::<bool>(), 0..=log::MAX_LINES).prop_map(|(module, follow, lines)| {
            Request::Log {
                module,
                follow,
                lines,
            }
        }),
        module.prop_filter_map("a module", |module| (!module.is_empty())
            .then_some(Request::Second { module })),
    ]
}

proptest! {
    #[test]
    fn requests_survive_the_round_trip(r in any_request()) {
        prop_assert_eq!(Request::decode(&r.encode()), Ok(r));
    }

    #[test]
    fn random_lines_are_refused_or_read_never_a_panic(line in "\\PC{0,200}") {
        let _ = Request::decode(&line);
        let _ = AnswerLine::decode(&line);
    }

    #[test]
    fn random_json_objects_never_panic(
        fields in proptest::collection::btree_map(
            prop_oneof![Just("version".to_owned()), Just("request".to_owned()),
                Just("module".to_owned()), Just("follow".to_owned()),
                Just("lines".to_owned()), "[a-z]{1,6}"],
            prop_oneof![Just(Value::Null), any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from), "[a-z]{0,8}".prop_map(Value::from),
                Just(Value::from("state")), Just(Value::from("log")), Just(Value::from(1))],
            0..6,
        )
    ) {
        let line = Value::Object(fields.into_iter().collect()).to_string();
        if let Ok(r) = Request::decode(&line) {
            // Whatever is accepted encodes to a line that reads the same.
            prop_assert_eq!(Request::decode(&r.encode()), Ok(r));
        }
    }
}
