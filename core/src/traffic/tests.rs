use std::io::Write;
use std::path::Path;

use serde::Deserialize;

use super::*;

fn spec(profile: Profile, duration_s: f64) -> TrafficSpec {
    TrafficSpec {
        profile,
        prompt: Lengths::Uniform { min: 16, max: 64 },
        output: Lengths::Fixed(32),
        seed: 1,
        duration_s,
    }
}

fn count_in(reqs: &[RequestSpec], from: f64, to: f64) -> usize {
    reqs.iter()
        .filter(|r| r.arrival_s >= from && r.arrival_s < to)
        .count()
}

fn within(got: f64, want: f64, rel: f64) -> bool {
    (got - want).abs() <= rel * want
}

fn well_formed(reqs: &[RequestSpec], duration_s: f64) {
    for (i, r) in reqs.iter().enumerate() {
        assert_eq!(r.id, i as u64);
        assert!(r.arrival_s >= 0.0 && r.arrival_s < duration_s, "{r:?}");
    }
    assert!(reqs.windows(2).all(|w| w[0].arrival_s <= w[1].arrival_s));
}

#[test]
fn same_seed_same_traffic_other_seed_other_traffic() {
    for profile in [
        Profile::Poisson { rate: 5.0 },
        Profile::Step {
            before: 1.0,
            after: 10.0,
            at_s: 20.0,
        },
        Profile::Ramp {
            from: 0.0,
            to: 10.0,
            over_s: 30.0,
        },
    ] {
        let a = spec(profile.clone(), 60.0);
        let first = a.generate().unwrap();
        assert!(first.len() > 50, "{profile:?}");
        assert_eq!(first, a.generate().unwrap(), "{profile:?}");
        well_formed(&first, 60.0);
        let b = TrafficSpec { seed: 2, ..a };
        assert_ne!(first, b.generate().unwrap(), "{profile:?}");
    }
}

#[test]
fn lengths_follow_their_distribution_on_separate_streams() {
    let a = spec(Profile::Poisson { rate: 50.0 }, 100.0);
    let reqs = a.generate().unwrap();
    assert!(reqs.iter().all(|r| r.output_tokens == 32));
    assert!(reqs.iter().all(|r| (16..=64).contains(&r.prompt_tokens)));
    assert!(reqs.iter().any(|r| r.prompt_tokens == 16));
    assert!(reqs.iter().any(|r| r.prompt_tokens == 64));
    let mean = reqs.iter().map(|r| f64::from(r.prompt_tokens)).sum::<f64>() / reqs.len() as f64;
    assert!(within(mean, 40.0, 0.02), "mean prompt {mean}");

    // Changing the output lengths leaves arrivals and prompts as they were.
    let b = TrafficSpec {
        output: Lengths::Uniform { min: 1, max: 8 },
        ..a
    };
    let other = b.generate().unwrap();
    assert_eq!(reqs.len(), other.len());
    for (x, y) in reqs.iter().zip(&other) {
        assert_eq!(
            (x.arrival_s, x.prompt_tokens),
            (y.arrival_s, y.prompt_tokens)
        );
        assert!((1..=8).contains(&y.output_tokens));
    }
}

#[test]
fn poisson_mean_inter_arrival_matches_the_rate() {
    let reqs = spec(Profile::Poisson { rate: 10.0 }, 10_000.0)
        .generate()
        .unwrap();
    assert!(within(reqs.len() as f64, 100_000.0, 0.02), "{}", reqs.len());
    let gaps: Vec<f64> = reqs
        .windows(2)
        .map(|w| w[1].arrival_s - w[0].arrival_s)
        .collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    assert!(within(mean, 0.1, 0.02), "mean inter-arrival {mean}");
    // Exponential: the standard deviation equals the mean.
    let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
    assert!(within(var.sqrt(), 0.1, 0.05), "sd {}", var.sqrt());
}

#[test]
fn step_changes_rate_at_its_time() {
    let reqs = spec(
        Profile::Step {
            before: 2.0,
            after: 20.0,
            at_s: 500.0,
        },
        1000.0,
    )
    .generate()
    .unwrap();
    well_formed(&reqs, 1000.0);
    let before = count_in(&reqs, 0.0, 500.0) as f64;
    let after = count_in(&reqs, 500.0, 1000.0) as f64;
    assert!(within(before, 1000.0, 0.1), "before {before}");
    assert!(within(after, 10_000.0, 0.05), "after {after}");

    // A step past the end: only the first rate.
    let reqs = spec(
        Profile::Step {
            before: 5.0,
            after: 1000.0,
            at_s: 100.0,
        },
        50.0,
    )
    .generate()
    .unwrap();
    assert!(within(reqs.len() as f64, 250.0, 0.25), "{}", reqs.len());

    // Silence, then a burst.
    let reqs = spec(
        Profile::Step {
            before: 0.0,
            after: 10.0,
            at_s: 30.0,
        },
        60.0,
    )
    .generate()
    .unwrap();
    assert!(reqs.iter().all(|r| r.arrival_s >= 30.0));
    assert!(!reqs.is_empty());
}

#[test]
fn ramp_rate_rises_linearly_then_holds() {
    let reqs = spec(
        Profile::Ramp {
            from: 0.0,
            to: 20.0,
            over_s: 1000.0,
        },
        1500.0,
    )
    .generate()
    .unwrap();
    well_formed(&reqs, 1500.0);
    // Λ(t) = 20 t² / 2000 on the ramp, then 20/s.
    for (from, to, want) in [
        (0.0, 500.0, 2500.0),
        (500.0, 1000.0, 7500.0),
        (1000.0, 1500.0, 10_000.0),
        (0.0, 100.0, 100.0),
    ] {
        let got = count_in(&reqs, from, to) as f64;
        let tol = if want < 1000.0 { 0.3 } else { 0.05 };
        assert!(within(got, want, tol), "[{from}, {to}): {got}, want {want}");
    }

    // Falling to zero: nothing after the ramp.
    let reqs = spec(
        Profile::Ramp {
            from: 20.0,
            to: 0.0,
            over_s: 100.0,
        },
        200.0,
    )
    .generate()
    .unwrap();
    assert!(reqs.iter().all(|r| r.arrival_s <= 100.0));
    assert!(within(reqs.len() as f64, 1000.0, 0.1), "{}", reqs.len());
    let early = count_in(&reqs, 0.0, 50.0) as f64; // Λ(50) = 750
    assert!(within(early, 750.0, 0.1), "{early}");

    // A flat ramp is a Poisson process.
    let reqs = spec(
        Profile::Ramp {
            from: 10.0,
            to: 10.0,
            over_s: 10.0,
        },
        1000.0,
    )
    .generate()
    .unwrap();
    assert!(within(reqs.len() as f64, 10_000.0, 0.05), "{}", reqs.len());
}

#[test]
fn offline_arrives_all_at_zero_and_ignores_duration() {
    for d in [1.0, f64::NAN, -3.0, f64::INFINITY] {
        let reqs = spec(Profile::Offline { count: 5 }, d).generate().unwrap();
        assert_eq!(reqs.len(), 5);
        for (i, r) in reqs.iter().enumerate() {
            assert_eq!(r.id, i as u64);
            assert_eq!(r.arrival_s, 0.0);
            assert_eq!(r.output_tokens, 32);
        }
    }
}

fn trace_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new()
        .suffix(".jsonl")
        .tempfile()
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn trace_spec(path: &Path, duration_s: f64) -> TrafficSpec {
    TrafficSpec {
        profile: Profile::Trace {
            path: path.to_path_buf(),
        },
        prompt: Lengths::Fixed(1),
        output: Lengths::Fixed(1),
        seed: 0,
        duration_s,
    }
}

#[test]
fn trace_replays_the_file() {
    let f = trace_file(
        "{\"arrival_s\": 0.0, \"prompt_tokens\": 32, \"output_tokens\": 16}\n\
         \n\
         {\"arrival_s\": 0.5, \"prompt_tokens\": 8, \"output_tokens\": 1}\r\n\
         {\"arrival_s\": 0.5, \"prompt_tokens\": 9, \"output_tokens\": 2}\n\
         {\"output_tokens\": 3, \"arrival_s\": 7, \"prompt_tokens\": 10}",
    );
    let all = trace_spec(f.path(), f64::INFINITY).generate().unwrap();
    let want = [(0.0, 32, 16), (0.5, 8, 1), (0.5, 9, 2), (7.0, 10, 3)];
    assert_eq!(all.len(), want.len());
    for (i, (r, (a, p, o))) in all.iter().zip(want).enumerate() {
        assert_eq!(
            r,
            &RequestSpec {
                id: i as u64,
                arrival_s: a,
                prompt_tokens: p,
                output_tokens: o
            }
        );
    }
    let cut = trace_spec(f.path(), 1.0).generate().unwrap();
    assert_eq!(cut, all[..3]);
}

#[test]
fn trace_errors_name_file_line_and_problem() {
    let ok = "{\"arrival_s\": 1.0, \"prompt_tokens\": 4, \"output_tokens\": 4}\n";
    for (bad, line, says) in [
        (
            "{\"arrival_s\": 2.0, \"prompt_tokens\": 4",
            2,
            "not a request object",
        ),
        ("not json", 2, "not a request object"),
        (
            "{\"arrival\": 2.0, \"prompt_tokens\": 4, \"output_tokens\": 4}",
            2,
            "unknown field `arrival`",
        ),
        (
            "{\"arrival_s\": 2.0, \"prompt_tokens\": 4, \"output_tokens\": 4, \"x\": 1}",
            2,
            "unknown field `x`",
        ),
        (
            "{\"arrival_s\": 2.0, \"prompt_tokens\": 4}",
            2,
            "missing field `output_tokens`",
        ),
        (
            "{\"arrival_s\": -2.0, \"prompt_tokens\": 4, \"output_tokens\": 4}",
            2,
            "arrival_s must be a non-negative finite number of seconds, got -2",
        ),
        (
            "{\"arrival_s\": 0.5, \"prompt_tokens\": 4, \"output_tokens\": 4}",
            2,
            "arrivals must be in ascending order, got arrival_s 0.5 after 1",
        ),
        (
            "{\"arrival_s\": 2.0, \"prompt_tokens\": 4, \"output_tokens\": 0}",
            2,
            "output_tokens must be at least 1, got 0",
        ),
        (
            "{\"arrival_s\": 2.0, \"prompt_tokens\": 0, \"output_tokens\": 3}",
            2,
            "prompt_tokens must be at least 1, got 0",
        ),
        (
            "\n\n{\"arrival_s\": 2.0, \"prompt_tokens\": -1, \"output_tokens\": 3}",
            4,
            "not a request object",
        ),
    ] {
        let f = trace_file(&format!("{ok}{bad}\n{ok}"));
        let err = trace_spec(f.path(), f64::INFINITY).generate().unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(&err, TrafficError::TraceLine { line: l, .. } if *l == line),
            "{msg}"
        );
        let name = f.path().display().to_string();
        assert!(
            msg.starts_with(&format!("trace `{name}` line {line}: ")),
            "{msg}"
        );
        assert!(msg.contains(says), "{msg} lacks {says}");
    }

    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(ok.as_bytes()).unwrap();
    f.write_all(b"\xff\xfe\n").unwrap();
    let msg = trace_spec(f.path(), f64::INFINITY)
        .generate()
        .unwrap_err()
        .to_string();
    assert!(msg.contains("line 2: is not valid UTF-8"), "{msg}");

    let f = trace_file("\n  \n");
    let err = trace_spec(f.path(), f64::INFINITY).generate().unwrap_err();
    assert!(matches!(err, TrafficError::TraceEmpty { .. }), "{err}");
    assert!(err.to_string().ends_with("has no requests"), "{err}");

    let missing = f.path().with_extension("missing");
    let err = trace_spec(&missing, f64::INFINITY).generate().unwrap_err();
    assert!(matches!(err, TrafficError::TraceRead { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with(&format!("trace `{}`: cannot read", missing.display())),
        "{err}"
    );
}

#[derive(Deserialize)]
struct Scenario {
    traffic: TrafficSpec,
}

fn toml_spec(body: &str) -> Result<TrafficSpec, String> {
    toml::from_str::<Scenario>(&format!("[traffic]\n{body}"))
        .map(|s| s.traffic)
        .map_err(|e| e.to_string())
}

#[test]
fn toml_traffic_tables_parse() {
    let t = toml_spec(
        r#"
profile = "poisson"   # or step, ramp, offline, trace
rate = 4.0
prompt = { uniform = { min = 16, max = 64 } }
output = { fixed = 32 }
seed = 1
duration_s = 60.0
"#,
    )
    .unwrap();
    assert_eq!(t, spec(Profile::Poisson { rate: 4.0 }, 60.0));

    let t = toml_spec(
        r#"
profile = "step"
before = 1
after = 8.5
at_s = 30
prompt = { fixed = 128 }
output = { uniform = { min = 1, max = 256 } }
duration_s = 90
"#,
    )
    .unwrap();
    assert_eq!(
        t,
        TrafficSpec {
            profile: Profile::Step {
                before: 1.0,
                after: 8.5,
                at_s: 30.0
            },
            prompt: Lengths::Fixed(128),
            output: Lengths::Uniform { min: 1, max: 256 },
            seed: 0,
            duration_s: 90.0,
        }
    );

    let t = toml_spec(
        r#"
profile = "ramp"
from = 0.5
to = 16.0
over_s = 120.0
prompt = { fixed = 64 }
output = { fixed = 64 }
seed = 42
duration_s = 180.0
"#,
    )
    .unwrap();
    assert_eq!(
        t.profile,
        Profile::Ramp {
            from: 0.5,
            to: 16.0,
            over_s: 120.0
        }
    );
    assert_eq!(t.seed, 42);

    let t = toml_spec(
        "profile = \"offline\"\ncount = 256\nprompt = { fixed = 1024 }\noutput = { fixed = 128 }",
    )
    .unwrap();
    assert_eq!(t.profile, Profile::Offline { count: 256 });
    assert_eq!(t.generate().unwrap().len(), 256);

    let t = toml_spec("profile = \"trace\"\npath = \"traces/a.jsonl\"").unwrap();
    assert_eq!(
        t.profile,
        Profile::Trace {
            path: "traces/a.jsonl".into()
        }
    );
    assert_eq!(t.duration_s, f64::INFINITY);
    let t = toml_spec("profile = \"trace\"\npath = \"a.jsonl\"\nduration_s = 30").unwrap();
    assert_eq!(t.duration_s, 30.0);
}

#[test]
fn toml_round_trips() {
    for t in [
        spec(Profile::Poisson { rate: 4.0 }, 60.0),
        spec(
            Profile::Step {
                before: 1.0,
                after: 2.0,
                at_s: 3.0,
            },
            10.0,
        ),
        spec(
            Profile::Ramp {
                from: 1.0,
                to: 2.0,
                over_s: 3.0,
            },
            10.0,
        ),
        TrafficSpec {
            duration_s: f64::INFINITY,
            ..spec(Profile::Offline { count: 3 }, 0.0)
        },
        trace_spec(Path::new("t.jsonl"), 5.0),
        trace_spec(Path::new("t.jsonl"), f64::INFINITY),
    ] {
        #[derive(serde::Serialize)]
        struct Out<'a> {
            traffic: &'a TrafficSpec,
        }
        let text = toml::to_string(&Out { traffic: &t }).unwrap();
        let back: Scenario = toml::from_str(&text).unwrap_or_else(|e| panic!("{text}\n{e}"));
        assert_eq!(back.traffic, t, "{text}");
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(
            serde_json::from_str::<TrafficSpec>(&json).unwrap(),
            t,
            "{json}"
        );
    }
    // The flat table, not a nested profile.
    let json = serde_json::to_value(spec(Profile::Poisson { rate: 4.0 }, 60.0)).unwrap();
    assert_eq!(json["profile"], "poisson");
    assert_eq!(json["rate"], 4.0);
    assert_eq!(json["prompt"]["uniform"]["max"], 64);
    assert_eq!(json["output"]["fixed"], 32);

    // Standalone, a profile is internally tagged.
    let p: Profile = toml::from_str("profile = \"step\"\nbefore = 1\nafter = 2\nat_s = 3").unwrap();
    assert_eq!(
        p,
        Profile::Step {
            before: 1.0,
            after: 2.0,
            at_s: 3.0
        }
    );
    assert_eq!(p.name(), "step");
}

#[test]
fn toml_shape_errors_say_what_is_wrong() {
    let base = "prompt = { fixed = 1 }\noutput = { fixed = 1 }\nduration_s = 10\n";
    for (body, says) in [
        (
            "profile = \"poisson\"\nrate = 1\nafter = 2\n",
            "traffic profile `poisson` does not take `after` (it takes `rate`)",
        ),
        (
            "profile = \"step\"\nbefore = 1\nafter = 2\n",
            "traffic profile `step` needs `at_s`",
        ),
        (
            "profile = \"poisson\"\nrate = 1\nrat = 2\n",
            "unknown field `rat`",
        ),
        ("profile = \"bursty\"\n", "unknown variant `bursty`"),
        (
            "profile = \"poisson\"\nrate = -1\n",
            "traffic `rate`: must be a positive finite number of requests per second, got -1",
        ),
    ] {
        let err = toml_spec(&format!("{body}{base}")).unwrap_err();
        assert!(err.contains(says), "{err}\nlacks: {says}");
    }
    for (body, says) in [
        (
            "profile = \"poisson\"\nrate = 1\nprompt = { uniform = { min = 10, max = 5 } }\noutput = { fixed = 1 }\nduration_s = 1",
            "traffic `prompt`: uniform lengths need 1 ≤ min ≤ max, got min 10 max 5",
        ),
        (
            "profile = \"poisson\"\nrate = 1\nprompt = { constant = 3 }\noutput = { fixed = 1 }\nduration_s = 1",
            "unknown variant `constant`",
        ),
        (
            "profile = \"poisson\"\nrate = 1\nprompt = { uniform = { min = 1, max = 2, mean = 3 } }\noutput = { fixed = 1 }\nduration_s = 1",
            "unexpected keys in table: mean", // toml's wording of an unknown field
        ),
        (
            "profile = \"poisson\"\nrate = 1\nprompt = { fixed = 3 }\nduration_s = 1",
            "traffic profile `poisson` needs `output`",
        ),
        (
            "profile = \"poisson\"\nrate = 1\nprompt = { fixed = 3 }\noutput = { fixed = 1 }",
            "traffic profile `poisson` needs `duration_s`",
        ),
        (
            "profile = \"trace\"\npath = \"t.jsonl\"\nprompt = { fixed = 3 }",
            "traffic profile `trace` does not take `prompt` (lengths come from the trace file)",
        ),
        (
            "profile = \"offline\"\nprompt = { fixed = 3 }\noutput = { fixed = 1 }",
            "traffic profile `offline` needs `count`",
        ),
        (
            "profile = \"poisson\"\nrate = \"fast\"\nprompt = { fixed = 3 }\noutput = { fixed = 1 }\nduration_s = 1",
            "invalid type",
        ),
    ] {
        let err = toml_spec(body).unwrap_err();
        assert!(err.contains(says), "{err}\nlacks: {says}");
    }
}

fn err_of(t: &TrafficSpec) -> String {
    let e = t.validate().unwrap_err().to_string();
    assert_eq!(t.generate().unwrap_err().to_string(), e);
    e
}

#[test]
fn validation_errors_name_the_rule_and_the_value() {
    let p = |rate| spec(Profile::Poisson { rate }, 10.0);
    assert_eq!(
        err_of(&p(-1.0)),
        "traffic `rate`: must be a positive finite number of requests per second, got -1"
    );
    assert!(err_of(&p(0.0)).ends_with("got 0"));
    assert!(err_of(&p(f64::NAN)).ends_with("got NaN"));
    assert!(err_of(&p(f64::INFINITY)).ends_with("got inf"));
    assert_eq!(
        err_of(&TrafficSpec {
            prompt: Lengths::Uniform { min: 10, max: 5 },
            ..p(1.0)
        }),
        "traffic `prompt`: uniform lengths need 1 ≤ min ≤ max, got min 10 max 5"
    );
    assert_eq!(
        err_of(&TrafficSpec {
            output: Lengths::Uniform { min: 0, max: 5 },
            ..p(1.0)
        }),
        "traffic `output`: uniform lengths need 1 ≤ min ≤ max, got min 0 max 5"
    );
    assert_eq!(
        err_of(&TrafficSpec {
            output: Lengths::Fixed(0),
            ..p(1.0)
        }),
        "traffic `output`: fixed lengths need at least 1 token, got 0"
    );
    assert_eq!(
        err_of(&TrafficSpec {
            duration_s: -5.0,
            ..p(1.0)
        }),
        "traffic `duration_s`: must be a positive finite number of seconds, got -5"
    );
    let step = |before, after, at_s| {
        spec(
            Profile::Step {
                before,
                after,
                at_s,
            },
            10.0,
        )
    };
    assert_eq!(
        err_of(&step(-1.0, 1.0, 1.0)),
        "traffic `before`: must be a non-negative finite number of requests per second, got -1"
    );
    assert_eq!(
        err_of(&step(0.0, 0.0, 1.0)),
        "traffic `before`/`after`: one of the rates must be positive, got 0 and 0"
    );
    assert_eq!(
        err_of(&step(1.0, 1.0, -1.0)),
        "traffic `at_s`: must be a non-negative finite number of seconds, got -1"
    );
    let ramp = |from, to, over_s| spec(Profile::Ramp { from, to, over_s }, 10.0);
    assert_eq!(
        err_of(&ramp(1.0, 1.0, 0.0)),
        "traffic `over_s`: must be a positive finite number of seconds, got 0"
    );
    assert_eq!(
        err_of(&ramp(0.0, 0.0, 1.0)),
        "traffic `from`/`to`: one of the rates must be positive, got 0 and 0"
    );
    assert!(err_of(&ramp(1.0, f64::NAN, 1.0)).starts_with("traffic `to`:"));
    assert_eq!(
        err_of(&spec(Profile::Offline { count: 0 }, 1.0)),
        "traffic `count`: must be at least 1 request, got 0"
    );
    assert_eq!(
        err_of(&trace_spec(Path::new(""), 1.0)),
        "traffic `path`: must name a JSON-lines trace file, got \"\""
    );
    assert_eq!(
        err_of(&trace_spec(Path::new("t.jsonl"), 0.0)),
        "traffic `duration_s`: must be a positive number of seconds (infinite for the whole trace), got 0"
    );
}

#[test]
fn request_cap_refuses_huge_traffic_without_generating_it() {
    for t in [
        spec(Profile::Poisson { rate: 1e6 }, 1e3),
        spec(Profile::Poisson { rate: f64::MAX }, f64::MAX),
        spec(
            Profile::Ramp {
                from: 0.0,
                to: 1e6,
                over_s: 1.0,
            },
            1e3,
        ),
        spec(
            Profile::Step {
                before: 0.0,
                after: 1e9,
                at_s: 1.0,
            },
            2.0,
        ),
        spec(Profile::Offline { count: u64::MAX }, 1.0),
        spec(
            Profile::Ramp {
                from: 1e300,
                to: 0.0,
                over_s: 1e300,
            },
            1e300,
        ),
    ] {
        let e = err_of(&t);
        assert!(
            e.starts_with("traffic would generate about ") && e.contains("cap of 10000000"),
            "{e}"
        );
    }
    // Tiny rates are fine and may give nothing.
    let reqs = spec(Profile::Poisson { rate: 1e-300 }, 1.0)
        .generate()
        .unwrap();
    assert!(reqs.is_empty());
}

#[test]
fn every_size_rate_and_time_has_an_upper_bound_checked_before_generating() {
    let with = |prompt: Lengths, output: Lengths| TrafficSpec {
        prompt,
        output,
        ..spec(Profile::Poisson { rate: 1.0 }, 10.0)
    };
    for (t, want) in [
        (
            with(Lengths::Fixed(4_000_000_000), Lengths::Fixed(1)),
            "traffic `prompt`: lengths must be at most 1048576 tokens, got 4000000000",
        ),
        (
            with(
                Lengths::Fixed(1),
                Lengths::Uniform {
                    min: 1,
                    max: u32::MAX,
                },
            ),
            "traffic `output`: lengths must be at most 1048576 tokens, got 4294967295",
        ),
        (
            spec(Profile::Poisson { rate: 1e-300 }, 1e10),
            "traffic `duration_s`: must be at most 604800 seconds (a week), got 10000000000",
        ),
        (
            spec(Profile::Poisson { rate: 2e6 }, 1e-3),
            "traffic `rate`: must be at most 1000000 requests per second, got 2000000",
        ),
        (
            spec(
                Profile::Step {
                    before: 1.0,
                    after: 1.0,
                    at_s: 1e12,
                },
                10.0,
            ),
            "traffic `at_s`: must be at most 604800 seconds (a week), got 1000000000000",
        ),
        (
            spec(
                Profile::Ramp {
                    from: 1.0,
                    to: 1.0,
                    over_s: 1e9,
                },
                10.0,
            ),
            "traffic `over_s`: must be at most 604800 seconds (a week), got 1000000000",
        ),
        (
            trace_spec(Path::new("t.jsonl"), 1e9),
            "traffic `duration_s`: must be at most 604800 seconds (a week), got 1000000000",
        ),
    ] {
        assert_eq!(err_of(&t), want);
    }
    // The largest bounded values pass.
    with(Lengths::Fixed(MAX_TOKENS), Lengths::Fixed(MAX_TOKENS))
        .validate()
        .unwrap();
    spec(Profile::Poisson { rate: 1e-3 }, MAX_SECONDS)
        .validate()
        .unwrap();
}

#[test]
fn a_trace_beyond_the_bounds_is_refused_naming_the_key_and_the_request() {
    let f = trace_file(
        "{\"arrival_s\": 0.5, \"prompt_tokens\": 4, \"output_tokens\": 4}\n\
         {\"arrival_s\": 1e12, \"prompt_tokens\": 4, \"output_tokens\": 4}\n",
    );
    let e = trace_spec(f.path(), f64::INFINITY)
        .generate()
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("traffic `arrival_s`: must be at most 604800 seconds (a week), got 1000000000000 (request 1 of trace"),
        "{e}"
    );
    let f =
        trace_file("{\"arrival_s\": 0.5, \"prompt_tokens\": 4000000000, \"output_tokens\": 4}\n");
    let e = trace_spec(f.path(), f64::INFINITY)
        .generate()
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("traffic `prompt_tokens`: must be at most 1048576 tokens, got 4000000000"),
        "{e}"
    );
}
