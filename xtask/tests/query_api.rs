//! The read-only EC2 calls made without the aws CLI (aws/query.rs): their
//! SigV4 signature is the one botocore computes for the same request, and
//! they find what the aws CLI finds in the emulator.

mod common;

use std::{
    fs,
    io::{Read, Write},
    net::TcpListener,
    thread,
};

use xtask::{aws::Aws, local};

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

/// Every process's command line, read while the client waits for its answer.
fn command_lines() -> String {
    let procs = fs::read_dir("/proc").unwrap().flatten();
    procs
        .filter_map(|p| fs::read(p.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .collect()
}

/// Answers one HTTP request with `status` and `body`; returns the request,
/// and the command lines of the machine while the request was open.
fn serve_once(listener: TcpListener, status: &'static str, body: String) -> thread::JoinHandle<(Vec<u8>, String)> {
    thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let n = stream.read(&mut buf).unwrap();
            request.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&request).to_string();
            if let Some((head, rest)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_string))
                    .map_or(0, |l| l.trim().parse().unwrap());
                if rest.len() >= length {
                    break;
                }
            }
        }
        let seen = command_lines();
        let answer = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        stream.write_all(answer.as_bytes()).unwrap();
        (request, seen)
    })
}

fn fixture(name: &str) -> String {
    fs::read_to_string(xtask::project::root().join("xtask/tests/fixtures").join(name)).unwrap()
}

/// Recomputes the request's signature with botocore's SigV4Auth over the
/// headers curl signed, at curl's timestamp, and prints both.
const VERIFY: &str = r#"
import datetime, sys
import botocore.auth as auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
head, body = open(sys.argv[1], "rb").read().split(b"\r\n\r\n", 1)
lines = head.decode().split("\r\n")
method, path, _ = lines[0].split(" ")
headers = {k.lower(): v for k, v in (l.split(": ", 1) for l in lines[1:])}
sent = headers["authorization"]
signed = sent.split("SignedHeaders=")[1].split(",")[0].split(";")
stamp = datetime.datetime.strptime(headers["x-amz-date"], "%Y%m%dT%H%M%SZ")
class At(datetime.datetime):
    @classmethod
    def utcnow(cls): return stamp
    @classmethod
    def now(cls, tz=None): return stamp.replace(tzinfo=tz)
auth.datetime.datetime = At
request = AWSRequest(method=method, url="http://" + headers["host"] + path, data=body,
                     headers={k: headers[k] for k in signed if k != "host"})
auth.SigV4Auth(Credentials(sys.argv[2], sys.argv[3], sys.argv[4]), "ec2", sys.argv[5]).add_auth(request)
print(sent)
print(request.headers["Authorization"])
"#;

#[test]
fn the_signature_is_the_one_botocore_computes_and_the_secret_stays_off_the_command_line() {
    let sh = xshell::Shell::new().unwrap();
    let venv = local::ensure_venv(&sh).unwrap();
    sh.set_var("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE");
    sh.set_var("AWS_SECRET_ACCESS_KEY", SECRET);
    sh.set_var("AWS_SESSION_TOKEN", "the-session-token");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let server = serve_once(listener, "200 OK", fixture("query-moto-5.2.1-describe-source-images.xml"));
    let aws = Aws { program: "/nonexistent/aws".into(), endpoint: Some(endpoint) };

    let found = aws
        .newest_image(&sh, "sa-east-1", "al2023-ami-2023.*-x86_64", &["amazon".to_string()], "x86_64")
        .unwrap()
        .unwrap();
    assert_eq!(found.image_id, "ami-0ed094fb1304fd857");

    let (request, command_lines) = server.join().unwrap();
    assert!(command_lines.contains("--aws-sigv4"), "curl was not running while its request was open");
    assert!(!command_lines.contains(SECRET), "the secret was on a command line");
    let text = String::from_utf8_lossy(&request).to_string();
    assert!(text.contains("Credential=AKIDEXAMPLE/"), "{text}");
    assert!(text.contains("/sa-east-1/ec2/aws4_request"), "{text}");
    assert!(text.contains("Filter.1.Value.1=al2023-ami-2023.%2A-x86_64"), "{text}");
    assert!(!text.contains(SECRET), "the secret itself went over the wire");
    let dir = common::scratch("query-api-signature");
    let saved = dir.join("request.http");
    fs::write(&saved, &request).unwrap();
    let python = venv.join("bin/python3");
    let output = std::process::Command::new(python)
        .args(["-c", VERIFY])
        .arg(&saved)
        .args(["AKIDEXAMPLE", SECRET, "the-session-token", "sa-east-1"])
        .output()
        .unwrap();
    let printed = common::text(&output);
    let lines: Vec<&str> = printed.lines().collect();
    assert!(output.status.success() && lines.len() == 2, "{printed}");
    assert_eq!(lines[0], lines[1], "curl's Authorization header against botocore's");
}

#[test]
fn an_error_from_ec2_is_named_with_its_code() {
    let sh = common::emulator_shell();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let recorded = fixture("query-moto-5.2.1-not-found.xml");
    let body = recorded.trim_end().rsplit_once('\n').unwrap().0.to_string(); // less curl's status line
    let server = serve_once(listener, "400 Bad Request", body);
    let aws = Aws { program: "/nonexistent/aws".into(), endpoint: Some(endpoint) };
    let error = aws.image(&sh, "us-east-1", "ami-00000000000000000").unwrap_err();
    server.join().unwrap();
    assert_eq!(
        format!("{error:#}"),
        "ec2 DescribeImages in us-east-1: InvalidAMIID.NotFound: The image id '[ami-00000000000000000]' does not exist"
    );
}

#[test]
fn without_keys_in_the_environment_the_aws_cli_finds_the_same_images() {
    let sh = common::emulator_shell();
    let emulator = local::Emulator::start(&sh).unwrap();
    let aws = emulator.aws();
    let newest = |sh: &xshell::Shell| {
        aws.newest_image(sh, "eu-west-1", "debian-13-amd64-*", &["136693071363".to_string()], "x86_64")
            .unwrap()
            .map(|i| (i.image_id, i.name, i.creation_date))
    };
    let by_query = newest(&sh);
    assert!(by_query.is_some());

    // A profile's keys, as most users have them: the query path steps
    // aside, and the aws CLI reads the file.
    let dir = common::scratch("query-api-profile");
    let credentials = dir.join("credentials");
    fs::write(&credentials, "[default]\naws_access_key_id = spark-packer-local\naws_secret_access_key = x\n").unwrap();
    let cli_sh = xshell::Shell::new().unwrap();
    cli_sh.set_var("AWS_ACCESS_KEY_ID", "");
    cli_sh.set_var("AWS_SECRET_ACCESS_KEY", "");
    cli_sh.set_var("AWS_SHARED_CREDENTIALS_FILE", &credentials);
    cli_sh.set_var("AWS_CONFIG_FILE", "/dev/null");
    assert_eq!(newest(&cli_sh), by_query);

    // And with no keys anywhere, the CLI's own words.
    cli_sh.set_var("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    let error = aws.own_images(&cli_sh, "eu-west-1").unwrap_err();
    assert!(format!("{error:#}").contains("Unable to locate credentials"), "{error:#}");
}

/// An HTTPS server on loopback that answers every POST with `body`, with a
/// certificate of its own that no system bundle holds.
const TLS_SERVER: &str = r#"
import http.server, ssl, sys
cert, key, body_file = sys.argv[1:4]
body = open(body_file, "rb").read()
class Answer(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.HTTPServer(("127.0.0.1", 0), Answer)
context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
context.load_cert_chain(cert, key)
server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

struct Stop(std::process::Child);
impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn self_signed(sh: &xshell::Shell, dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
    xshell::cmd!(
        sh,
        "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout {key} -out {cert}"
    )
    .quiet()
    .ignore_stderr()
    .run()
    .unwrap();
    (cert, key)
}

/// As the aws CLI does, curl trusts the certificates AWS_CA_BUNDLE names
/// (a company's TLS proxy, say): the endpoint is reached with its bundle,
/// and refused with another.
#[test]
fn an_https_endpoint_is_trusted_through_aws_ca_bundle_as_the_cli_would() {
    let sh = xshell::Shell::new().unwrap();
    let venv = local::ensure_venv(&sh).unwrap();
    let dir = common::scratch("query-api-tls");
    let (cert, key) = self_signed(&sh, &dir, "proxy");
    let (other, _) = self_signed(&sh, &dir, "other");
    let body = dir.join("body.xml");
    fs::write(&body, fixture("query-moto-5.2.1-describe-source-images.xml")).unwrap();
    let mut server = std::process::Command::new(venv.join("bin/python3"))
        .args(["-c", TLS_SERVER])
        .args([&cert, &key, &body])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stdout.take().unwrap()), &mut port).unwrap();
    let _server = Stop(server);
    let aws = Aws { program: "/nonexistent/aws".into(), endpoint: Some(format!("https://127.0.0.1:{}", port.trim())) };
    sh.set_var("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE");
    sh.set_var("AWS_SECRET_ACCESS_KEY", SECRET);
    sh.set_var("AWS_CONFIG_FILE", "/dev/null");
    let newest = |sh: &xshell::Shell| {
        aws.newest_image(sh, "sa-east-1", "al2023-ami-2023.*-x86_64", &["amazon".to_string()], "x86_64")
    };

    sh.set_var("AWS_CA_BUNDLE", &cert);
    assert_eq!(newest(&sh).unwrap().unwrap().image_id, "ami-0ed094fb1304fd857");
    sh.set_var("AWS_CA_BUNDLE", &other);
    let error = newest(&sh).unwrap_err();
    assert!(format!("{error:#}").contains("certificate"), "{error:#}");
}

/// With FIPS or dual-stack endpoints asked for, which curl cannot know, the
/// aws CLI makes the call, even with keys in the environment: here a CLI
/// that is not there, so the call fails where curl's succeeded.
#[test]
fn fips_endpoints_leave_the_call_to_the_aws_cli() {
    let sh = common::emulator_shell();
    sh.set_var("AWS_CONFIG_FILE", "/dev/null");
    let emulator = local::Emulator::start(&sh).unwrap();
    let aws = Aws { program: "/nonexistent/aws".into(), endpoint: Some(emulator.endpoint()) };
    assert!(aws.own_images(&sh, "eu-west-1").is_ok(), "curl made the call");
    sh.set_var("AWS_USE_FIPS_ENDPOINT", "true");
    let error = aws.own_images(&sh, "eu-west-1").unwrap_err();
    assert!(format!("{error:#}").contains("/nonexistent/aws"), "{error:#}");
}
