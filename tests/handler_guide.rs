//! The signature verifiers of `docs/handler-guide.md` (`docs/examples/verify*`), run
//! against a real signed delivery: a real server delivers an AFTER event to the
//! recording receiver, and each verifier (Rust compiled in here; Python and Node run as
//! programs, both the standard-library ones and the ones using the Standard Webhooks
//! libraries) accepts the captured request and rejects it with a tampered body or with
//! another handler's secret. The library verifiers need PyPI `standardwebhooks` and
//! `npm ci` in `docs/examples` (both done by `.ci/run`); without them they are skipped,
//! saying so, so that the README's test command runs on a machine that lacks them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{SystemTime, UNIX_EPOCH};

use provisioning_client::proto;
use provisioning_tests::receiver::{Receiver, Recorded, Reply};
use provisioning_tests::{eventually, spawn_server, TestDatabase};
use tokio::io::AsyncWriteExt;

use crate::dispatch::{create, emit_after, http_handler, secret_of, WAIT};

#[path = "../docs/examples/verify.rs"]
mod verify;

/// Another valid secret, of no handler.
const OTHER_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples")
        .join(name)
}

/// The request headers as a JSON object (names in lower case, as received).
fn headers_json(request: &Recorded) -> String {
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().expect("ASCII header").into(),
            )
        })
        .collect();
    serde_json::Value::Object(headers).to_string()
}

/// Whether the Standard Webhooks library `program`'s verifier imports is installed.
fn library_installed(program: &str) -> bool {
    if program == "node" {
        return example("node_modules/standardwebhooks").exists();
    }
    std::process::Command::new(program)
        .args(["-c", "import standardwebhooks"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs `program args... SECRET HEADERS_JSON` with `body` on stdin: `(accepted, stdout)`.
async fn run_verifier(
    program: &str,
    args: &[PathBuf],
    secret: &str,
    headers: &str,
    body: &[u8],
) -> (bool, String) {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .arg(secret)
        .arg(headers)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(body).await.expect("writing the body");
    drop(stdin);
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{program} did not finish"))
        .expect("verifier output");
    let mut stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() || output.status.code() == Some(1),
        "{program} {args:?} crashed: {stdout} {stderr}"
    );
    if !stderr.trim().is_empty() {
        // A missing library also exits 1: show why.
        stdout = format!("{stdout} (stderr: {})", stderr.trim());
    }
    (output.status.success(), stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_guides_verifiers_accept_a_real_delivery_and_reject_tampering() {
    let db = TestDatabase::new().await;
    let server = spawn_server(&db).await;
    let receiver = Receiver::start().await;
    receiver.route("/hook", vec![Reply::ok()]);
    let handler = create(
        &server.client,
        http_handler(
            "verified",
            "clients.create",
            proto::Phase::After,
            &receiver.url("/hook"),
        ),
    )
    .await;
    let secret = secret_of(&handler);
    emit_after(
        &server.client,
        "clients.create",
        r#"{"id": 9007199254740993, "amount": 12.50, "name": "Zoë"}"#,
    )
    .await;
    let request = eventually(WAIT, "the delivery", || async {
        receiver.requests("/hook").into_iter().next()
    })
    .await;
    let body = request.body.to_vec();
    let mut tampered = body.clone();
    let last = tampered.len() - 2;
    tampered[last] ^= 1;

    // Rust: docs/examples/verify.rs, compiled into this test.
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let header = |name: &str| request.header(name);
    assert_eq!(verify::verify(&secret, header, &body, now), Ok(()));
    assert!(verify::verify(&secret, header, &tampered, now).is_err());
    assert!(verify::verify(OTHER_SECRET, header, &body, now).is_err());
    assert!(
        verify::verify(&secret, header, &body, now + 3600).is_err(),
        "an old request is refused"
    );

    let headers = headers_json(&request);
    let verifiers = [
        ("python3", vec![example("verify.py")], false),
        ("node", vec![example("verify.mjs")], false),
        ("python3", vec![example("verify_standardwebhooks.py")], true),
        ("node", vec![example("verify_standardwebhooks.mjs")], true),
    ];
    for (program, args, needs_library) in &verifiers {
        if *needs_library && !library_installed(program) {
            eprintln!(
                "skipping {args:?}: the Standard Webhooks library for {program} is not \
                 installed (`.ci/run` installs it: pip standardwebhooks, npm ci in docs/examples)"
            );
            continue;
        }
        let (accepted, out) = run_verifier(program, args, &secret, &headers, &body).await;
        assert!(accepted, "{program} refused a real delivery: {out}");
        assert_eq!(out, "valid");
        let (accepted, out) = run_verifier(program, args, &secret, &headers, &tampered).await;
        assert!(!accepted, "{program} accepted a tampered body: {out}");
        let (accepted, out) = run_verifier(program, args, OTHER_SECRET, &headers, &body).await;
        assert!(!accepted, "{program} accepted another secret: {out}");
    }
}
