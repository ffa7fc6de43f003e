//! The agent's socket and its exposure: the default directory must be private and ours,
//! `--socket` never deletes or chmods what is not ours, a failed start leaves nothing behind,
//! a busy port fails before the model loads, and with `--allow-remote` every read needs the
//! token.

mod daemon_support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use daemon_support::{Agent, NODE, free_port, mode, run, stderr};

/// `serve` on the default socket with `$TMPDIR` = `tmp`, `$USER` = `u`, no `$XDG_RUNTIME_DIR`.
fn default_env(c: &mut std::process::Command, tmp: &Path) {
    c.env("TMPDIR", tmp)
        .env("USER", "u")
        .env_remove("XDG_RUNTIME_DIR");
}

#[test]
fn a_default_socket_directory_others_can_write_is_refused_and_left_alone() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("emoe-u");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut args = vec!["serve"];
    args.extend_from_slice(&NODE);
    let mut c = std::process::Command::new(daemon_support::BIN);
    c.args(&args)
        .env("EMOE_CACHE_DIR", t.path().join("cache"))
        .stdin(std::process::Stdio::null());
    default_env(&mut c, t.path());
    let out = c.output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&dir.display().to_string()), "{err}");
    assert!(
        err.contains("group- or world-writable (mode 0777)"),
        "{err}"
    );
    assert_eq!(mode(&dir), 0o777, "not chmod-ed");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "no socket made"
    );
    assert!(
        !t.path().join("cache").exists(),
        "refused before the model loads"
    );

    // A client refuses to send its token there either.
    let tok = t.path().join("tok");
    std::fs::write(&tok, "s3cret\n").unwrap();
    for cmd in [
        vec!["status"],
        vec![
            "scale",
            "--to",
            "dp3tp2ep6",
            "--yes",
            "--token-file",
            tok.to_str().unwrap(),
        ],
        vec!["bridge"],
    ] {
        let mut c = std::process::Command::new(daemon_support::BIN);
        c.args(&cmd).stdin(std::process::Stdio::null());
        default_env(&mut c, t.path());
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("world-writable"),
            "{cmd:?}: {}",
            stderr(&out)
        );
    }
}

#[test]
fn the_default_socket_directory_is_created_private() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("emoe-u");
    let sock = dir.join("agent.sock");
    let p = sock.clone();
    let tmp = t.path().to_path_buf();
    let a = Agent::spawn(
        &NODE,
        |c| default_env(c, &tmp),
        || std::os::unix::net::UnixStream::connect(&p).is_ok(),
    );
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&sock), 0o600);
    let (_, _) = a.terminate();
    assert!(!sock.exists(), "the socket is removed on shutdown");
}

#[test]
fn socket_paths_that_are_not_a_stale_socket_of_ours_are_never_replaced() {
    let t = tempfile::tempdir().unwrap();
    let file = t.path().join("precious.txt");
    std::fs::write(&file, "keep me").unwrap();
    let link = t.path().join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let dir = t.path().join("adir");
    std::fs::create_dir(&dir).unwrap();
    for (path, says) in [
        (&file, "exists and is not a socket; not replacing it"),
        (&link, "is a symbolic link; not replacing it"),
        (&dir, "is a directory"),
    ] {
        let mut args = vec!["serve", "--socket", path.to_str().unwrap()];
        args.extend_from_slice(&NODE);
        let out = run(&args, &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{}: {err}", path.display());
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains(says), "{err}");
    }
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(dir.is_dir());
}

#[test]
fn an_existing_directory_keeps_its_mode_and_a_failed_start_leaves_nothing() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("shared");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let sock = dir.join("a.sock");
    // A start that fails (no such model) after the socket checks.
    let out = run(
        &[
            "serve",
            "--socket",
            sock.to_str().unwrap(),
            "--model",
            "no-such-model",
        ],
        &[],
    );
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!sock.exists(), "a failed start leaves no socket");
    assert_eq!(mode(&dir), 0o755, "the existing directory is not chmod-ed");
    // A missing directory of a failed start is not created either.
    let fresh = t.path().join("new").join("b.sock");
    let out = run(
        &[
            "serve",
            "--socket",
            fresh.to_str().unwrap(),
            "--model",
            "no-such-model",
        ],
        &[],
    );
    assert_ne!(out.status.code(), Some(0));
    assert!(!t.path().join("new").exists(), "{}", stderr(&out));
    // A start that works: the directory keeps its mode; a missing one is made 0700.
    let a = Agent::on_socket(&sock, &[]);
    assert_eq!(mode(&dir), 0o755);
    assert_eq!(mode(&sock), 0o600);
    a.terminate();
    assert_eq!(mode(&dir), 0o755);
    let a = Agent::on_socket(&fresh, &[]);
    assert_eq!(mode(&t.path().join("new")), 0o700);
    a.terminate();
    assert!(!fresh.exists());
}

#[test]
fn a_stale_socket_of_ours_is_replaced_and_a_live_one_refused() {
    let t = tempfile::tempdir().unwrap();
    let sock = t.path().join("a.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists(), "a stale socket file");
    let a = Agent::on_socket(&sock, &[]);
    let mut args = vec!["serve", "--socket", sock.to_str().unwrap()];
    args.extend_from_slice(&NODE);
    let out = run(&args, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("already listens"), "{}", stderr(&out));
    assert!(
        std::os::unix::net::UnixStream::connect(&sock).is_ok(),
        "the first agent keeps its socket"
    );
    a.terminate();
}

#[test]
fn a_busy_port_fails_before_the_model_loads() {
    let t = tempfile::tempdir().unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let cache = t.path().join("cache");
    let listen = format!("tcp://{addr}");
    let free = format!("127.0.0.1:{}", free_port());
    let sock = t.path().join("a.sock");
    for args in [
        vec!["serve", "--listen", listen.as_str()],
        vec![
            "serve",
            "--listen",
            &format!("tcp://{free}"),
            "--metrics",
            &addr,
        ],
        vec![
            "serve",
            "--socket",
            sock.to_str().unwrap(),
            "--metrics",
            &addr,
        ],
    ] {
        let mut args = args.clone();
        args.extend_from_slice(&NODE);
        let t0 = Instant::now();
        let out = run(&args, &[("EMOE_CACHE_DIR", &cache)]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
        assert!(!cache.exists(), "{args:?}: the model was loaded first");
        assert!(!sock.exists());
        assert!(t0.elapsed() < Duration::from_secs(20));
    }
}

#[test]
fn a_remote_agent_needs_the_token_for_reads_and_metrics() {
    let t = tempfile::tempdir().unwrap();
    let tok = t.path().join("tok");
    std::fs::write(&tok, "s3cret\n").unwrap();
    let tok = tok.to_str().unwrap();
    // Non-loopback metrics follow --listen's rule.
    let mut args = vec!["serve", "--metrics", "0.0.0.0:1"];
    args.extend_from_slice(&NODE);
    let out = run(&args, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(
            "--metrics 0.0.0.0:1: a non-loopback address needs both --allow-remote and --token-file"
        ),
        "{}",
        stderr(&out)
    );
    let out = run(
        &["serve", "--allow-remote", "--listen", "tcp://127.0.0.1:1"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--allow-remote needs --token-file"),
        "{}",
        stderr(&out)
    );

    let port = free_port();
    let mport = free_port();
    let listen = format!("tcp://127.0.0.1:{port}");
    let metrics = format!("127.0.0.1:{mport}");
    let mut args = vec![
        "--listen",
        listen.as_str(),
        "--allow-remote",
        "--token-file",
        tok,
        "--metrics",
        metrics.as_str(),
    ];
    args.extend_from_slice(&NODE);
    let a = Agent::spawn(
        &args,
        |_| {},
        || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
    );
    let agent = format!("http://127.0.0.1:{port}");
    let out = run(&["status", "--json", "--agent", &agent], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("needs a token for every call"),
        "{}",
        stderr(&out)
    );
    let out = run(&["watch", "--count", "1", "--agent", &agent], &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let out = run(
        &["status", "--json", "--agent", &agent, "--token-file", tok],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(
        &[
            "watch",
            "--count",
            "1",
            "--agent",
            &agent,
            "--token-file",
            tok,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Plan is a read too: refused without the token, answered with it.
    let plan = ["plan", "--agent", &agent, "--to", "dp3tp2ep6", "--json"];
    let out = run(&plan, &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let mut with = plan.to_vec();
    with.extend(["--token-file", tok]);
    let out = run(&with, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let get = |auth: Option<&str>| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&metrics).unwrap();
        let h = auth.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\n{h}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    assert!(get(None).starts_with("HTTP/1.1 401"), "{}", get(None));
    assert!(get(Some("Bearer guess")).starts_with("HTTP/1.1 401"));
    let ok = get(Some("Bearer s3cret"));
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    assert!(ok.contains("emoe_device_memory_used_bytes"), "{ok}");
    a.terminate();
}
