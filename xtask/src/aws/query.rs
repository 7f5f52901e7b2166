//! Read-only EC2 calls through the query API, sent by curl, which signs them
//! itself (SigV4, `--aws-sigv4`, curl 7.75 or later). A curl process costs
//! milliseconds where an aws CLI process costs a third of a second of CPU,
//! and a run that finds every build current makes little else (issue 16).
//! Used only with credentials in the environment; otherwise the aws CLI,
//! which knows profiles and SSO, makes the call.

use std::{
    io::Write,
    os::unix::process::CommandExt,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use xshell::Shell;

use super::{Image, Tag};

/// The EC2 API version whose XML the parser reads.
const API_VERSION: &str = "2016-11-15";

/// Keys from the environment, as the aws CLI would find them first.
pub struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    /// `AWS_CA_BUNDLE`: the certificates the aws CLI would trust.
    ca_bundle: Option<String>,
}

impl Credentials {
    /// From `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (and
    /// `AWS_SESSION_TOKEN`) as `sh` sees them; None when either is unset.
    pub fn from_shell(sh: &Shell) -> Option<Credentials> {
        let var = |name| sh.var(name).ok().filter(|v| !v.is_empty());
        Some(Credentials {
            access_key_id: var("AWS_ACCESS_KEY_ID")?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
            session_token: var("AWS_SESSION_TOKEN"),
            ca_bundle: var("AWS_CA_BUNDLE"),
        })
    }

    /// curl's config text, read from stdin, so the secret is never in a
    /// command line that `ps` shows.
    fn curl_config(&self) -> String {
        let quote = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
        let mut config = format!("user = \"{}:{}\"\n", quote(&self.access_key_id), quote(&self.secret_access_key));
        if let Some(token) = &self.session_token {
            config.push_str(&format!("header = \"x-amz-security-token: {}\"\n", quote(token)));
        }
        if let Some(bundle) = &self.ca_bundle {
            config.push_str(&format!("cacert = \"{}\"\n", quote(bundle)));
        }
        config
    }
}

/// Whether the environment or the aws config file holds a setting that
/// only the aws CLI follows (see `setting_only_the_cli_follows`).
pub fn cli_settings_there(sh: &Shell) -> bool {
    let config = sh.var("AWS_CONFIG_FILE").ok().filter(|f| !f.is_empty()).map(PathBuf::from);
    let config = config.or_else(|| sh.var("HOME").ok().map(|home| PathBuf::from(home).join(".aws/config")));
    let text = config.and_then(|path| std::fs::read_to_string(path).ok());
    setting_only_the_cli_follows(|name| sh.var(name).ok(), text.as_deref()).is_some()
}

/// A setting with which the aws CLI would send the call elsewhere or trust
/// other certificates than curl would: the CLI makes such calls itself.
/// `env` gives the environment; `config` the aws config file's text.
pub fn setting_only_the_cli_follows(env: impl Fn(&str) -> Option<String>, config: Option<&str>) -> Option<String> {
    // AWS_CA_BUNDLE is not here: curl is given it (see `Credentials`).
    const ENV: [&str; 2] = ["AWS_USE_FIPS_ENDPOINT", "AWS_USE_DUALSTACK_ENDPOINT"];
    const CONFIG: [&str; 4] = ["ca_bundle", "use_fips_endpoint", "use_dualstack_endpoint", "endpoint_url"];
    if let Some(name) =
        ENV.iter().find(|name| env(name).is_some_and(|v| !v.is_empty() && !v.eq_ignore_ascii_case("false")))
    {
        return Some(name.to_string());
    }
    // Any profile's: which one the CLI would read is its business, not ours.
    let keys = config.into_iter().flat_map(str::lines).filter_map(|line| Some(line.split_once('=')?.0.trim()));
    keys.into_iter().find(|key| CONFIG.contains(key)).map(|key| format!("{key} in the aws config file"))
}

/// Where a call for `region` goes: the emulator when there is one, else
/// the region's public endpoint.
pub fn endpoint_url(endpoint: Option<&str>, region: &str) -> String {
    match endpoint {
        Some(url) => url.to_string(),
        None if region.starts_with("cn-") => format!("https://ec2.{region}.amazonaws.com.cn/"),
        None => format!("https://ec2.{region}.amazonaws.com/"),
    }
}

/// A DescribeImages request, which the aws CLI and the query API each
/// spell their own way.
#[derive(Debug, Default, Clone)]
pub struct ImageQuery {
    pub owners: Vec<String>,
    pub image_ids: Vec<String>,
    /// (name, values) pairs, as in `Name=tag:managed-by,Values=spark-packer`.
    pub filters: Vec<(String, Vec<String>)>,
    pub include_disabled: bool,
}

impl ImageQuery {
    pub fn filter(mut self, name: &str, values: &[&str]) -> ImageQuery {
        self.filters.push((name.to_string(), values.iter().map(|v| v.to_string()).collect()));
        self
    }

    /// `aws ec2 describe-images` arguments.
    pub fn cli_args(&self) -> Vec<String> {
        let mut args = vec!["describe-images".to_string()];
        if !self.owners.is_empty() {
            args.push("--owners".to_string());
            args.extend(self.owners.iter().cloned());
        }
        if !self.image_ids.is_empty() {
            args.push("--image-ids".to_string());
            args.extend(self.image_ids.iter().cloned());
        }
        if !self.filters.is_empty() {
            args.push("--filters".to_string());
            args.extend(self.filters.iter().map(|(name, values)| format!("Name={name},Values={}", values.join(","))));
        }
        if self.include_disabled {
            args.push("--include-disabled".to_string());
        }
        args
    }

    /// The query API's form fields, numbered from 1.
    pub fn form(&self) -> Vec<(String, String)> {
        let mut form = vec![("Action".to_string(), "DescribeImages".to_string())];
        form.push(("Version".to_string(), API_VERSION.to_string()));
        form.extend(self.owners.iter().enumerate().map(|(i, o)| (format!("Owner.{}", i + 1), o.clone())));
        form.extend(self.image_ids.iter().enumerate().map(|(i, id)| (format!("ImageId.{}", i + 1), id.clone())));
        for (i, (name, values)) in self.filters.iter().enumerate() {
            form.push((format!("Filter.{}.Name", i + 1), name.clone()));
            form.extend(
                values.iter().enumerate().map(|(j, v)| (format!("Filter.{}.Value.{}", i + 1, j + 1), v.clone())),
            );
        }
        if self.include_disabled {
            form.push(("IncludeDisabled".to_string(), "true".to_string()));
        }
        form
    }
}

/// Every image `query` finds in `region`, page after page.
pub fn describe_images(
    credentials: &Credentials,
    endpoint: Option<&str>,
    region: &str,
    query: &ImageQuery,
) -> Result<Vec<Image>> {
    let mut images = Vec::new();
    let mut next_token: Option<String> = None;
    loop {
        let mut form = query.form();
        form.extend(next_token.take().map(|token| ("NextToken".to_string(), token)));
        let (status, body) = post(credentials, endpoint, region, &form)?;
        if status != 200 {
            bail!("ec2 DescribeImages in {region}: {}", error_text(status, &body));
        }
        let (page, token) = parse_describe_images(&body)?;
        images.extend(page);
        match token {
            Some(token) => next_token = Some(token),
            None => return Ok(images),
        }
    }
}

/// POSTs `form` to EC2 in `region`; the HTTP status and the body.
fn post(
    credentials: &Credentials,
    endpoint: Option<&str>,
    region: &str,
    form: &[(String, String)],
) -> Result<(u16, String)> {
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--proto", "=http,https", "--max-time", "120"])
        // Throttling (503) and dropped connections, as the aws CLI retries them.
        .args(["--retry", "4", "--config", "-", "--write-out", "\n%{http_code}"])
        .arg("--aws-sigv4")
        .arg(format!("aws:amz:{region}:ec2"));
    for (name, value) in form {
        command.arg("--data-urlencode").arg(format!("{name}={value}"));
    }
    command.arg(endpoint_url(endpoint, region));
    // Its own process group, as the aws CLI's: we decide what a Ctrl-C stops.
    command.process_group(0).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child =
        command.spawn().context("run curl, which signs EC2's read-only calls: install curl 7.75 or later")?;
    child.stdin.take().context("curl's stdin")?.write_all(credentials.curl_config().as_bytes())?;
    let output = child.wait_with_output().context("wait for curl")?;
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        let hint = if said.contains("aws-sigv4") { " (--aws-sigv4 needs curl 7.75 or later)" } else { "" };
        bail!("curl to EC2 in {region} failed: {}{hint}", said.trim());
    }
    let text = String::from_utf8(output.stdout).context("EC2's answer is not UTF-8")?;
    let (body, status) = text.rsplit_once('\n').context("curl wrote no HTTP status")?;
    Ok((status.trim().parse().with_context(|| format!("curl's HTTP status {status:?}"))?, body.to_string()))
}

/// EC2's `<Errors>` as `Code: Message`, else the status and body.
pub fn error_text(status: u16, body: &str) -> String {
    let found = roxmltree::Document::parse(body).ok().and_then(|doc| {
        let error = doc.descendants().find(|n| n.tag_name().name() == "Error")?;
        Some(format!("{}: {}", child_text(error, "Code")?, child_text(error, "Message").unwrap_or_default()))
    });
    found.unwrap_or_else(|| format!("HTTP {status}: {}", body.trim()))
}

/// DescribeImages' XML: the images and the next page's token, if any.
pub fn parse_describe_images(xml: &str) -> Result<(Vec<Image>, Option<String>)> {
    let doc = roxmltree::Document::parse(xml).context("parse DescribeImages XML")?;
    let root = doc.root_element();
    let set = child(root, "imagesSet").context("DescribeImages XML has no imagesSet")?;
    let images = items(set)
        .map(|item| {
            let text = |name| child_text(item, name).unwrap_or_default();
            Image {
                image_id: text("imageId"),
                name: text("name"),
                state: text("imageState"),
                virtualization_type: text("virtualizationType"),
                architecture: text("architecture"),
                public: text("isPublic") == "true",
                creation_date: text("creationDate"),
                tags: child(item, "tagSet")
                    .into_iter()
                    .flat_map(items)
                    .map(|tag| Tag {
                        key: child_text(tag, "key").unwrap_or_default(),
                        value: child_text(tag, "value").unwrap_or_default(),
                    })
                    .collect(),
            }
        })
        .collect();
    Ok((images, child_text(root, "nextToken").filter(|t| !t.is_empty())))
}

fn child<'a, 'i>(node: roxmltree::Node<'a, 'i>, name: &str) -> Option<roxmltree::Node<'a, 'i>> {
    node.children().find(|n| n.tag_name().name() == name)
}

fn child_text(node: roxmltree::Node, name: &str) -> Option<String> {
    child(node, name).map(|n| n.text().unwrap_or_default().to_string())
}

fn items<'a, 'i>(set: roxmltree::Node<'a, 'i>) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    set.children().filter(|n| n.tag_name().name() == "item")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::parse_describe_images as parse_cli_json;

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(crate::project::root().join("xtask/tests/fixtures").join(name)).unwrap()
    }

    fn facts(image: &Image) -> String {
        format!(
            "{} {} {} {} {} {} {} {:?}",
            image.image_id,
            image.name,
            image.state,
            image.virtualization_type,
            image.architecture,
            image.public,
            image.creation_date,
            image.tags()
        )
    }

    #[test]
    fn the_xml_gives_what_the_cli_gives_for_the_same_images() {
        // Both recorded from moto 5.2.1 for the same factory listing in
        // us-east-1: the query API's XML by curl, the aws CLI's JSON.
        let (from_xml, next) = parse_describe_images(&fixture("query-moto-5.2.1-describe-images.xml")).unwrap();
        let from_json = parse_cli_json(&fixture("cli-moto-5.2.1-describe-images.json")).unwrap();
        assert_eq!(next, None);
        assert_eq!(from_xml.len(), 4);
        let sorted = |images: &[Image]| {
            let mut facts: Vec<String> = images.iter().map(facts).collect();
            facts.sort();
            facts
        };
        assert_eq!(sorted(&from_xml), sorted(&from_json));
        // Tags are the item's own, not its block devices' items.
        assert!(from_xml.iter().all(|i| i.tags().get("managed-by") == Some(&"spark-packer")));
        assert!(from_xml.iter().all(|i| i.tags().len() == 15), "{:?}", from_xml[0].tags());
    }

    #[test]
    fn a_source_image_and_an_empty_answer_parse() {
        let (images, _) = parse_describe_images(&fixture("query-moto-5.2.1-describe-source-images.xml")).unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(images[0].name, "al2023-ami-2023.11.20260427.1-kernel-6.1-x86_64");
        assert!(images[0].public);
        assert!(images[0].tags().is_empty());
        let empty = r#"<DescribeImagesResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15"><imagesSet/><nextToken>abc</nextToken></DescribeImagesResponse>"#;
        let (images, next) = parse_describe_images(empty).unwrap();
        assert!(images.is_empty());
        assert_eq!(next.as_deref(), Some("abc"));
    }

    #[test]
    fn an_error_says_ec2s_code_and_message() {
        let body = fixture("query-moto-5.2.1-not-found.xml");
        let body = body.trim_end().rsplit_once('\n').unwrap().0; // recorded with curl's status line
        assert_eq!(
            error_text(400, body),
            "InvalidAMIID.NotFound: The image id '[ami-00000000000000000]' does not exist"
        );
        assert_eq!(error_text(502, "Bad Gateway\n"), "HTTP 502: Bad Gateway");
    }

    #[test]
    fn a_query_is_spelled_for_the_cli_and_for_the_api() {
        let query = ImageQuery { owners: vec!["self".into()], ..Default::default() }
            .filter("tag:managed-by", &["spark-packer"])
            .filter("image-id", &["ami-1", "ami-2"]);
        assert_eq!(
            query.cli_args(),
            [
                "describe-images",
                "--owners",
                "self",
                "--filters",
                "Name=tag:managed-by,Values=spark-packer",
                "Name=image-id,Values=ami-1,ami-2"
            ]
        );
        let form: Vec<String> = query.form().iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            form,
            [
                "Action=DescribeImages",
                "Version=2016-11-15",
                "Owner.1=self",
                "Filter.1.Name=tag:managed-by",
                "Filter.1.Value.1=spark-packer",
                "Filter.2.Name=image-id",
                "Filter.2.Value.1=ami-1",
                "Filter.2.Value.2=ami-2"
            ]
        );
    }

    #[test]
    fn calls_go_to_the_emulator_or_the_regions_endpoint() {
        assert_eq!(endpoint_url(Some("http://127.0.0.1:5000"), "eu-west-1"), "http://127.0.0.1:5000");
        assert_eq!(endpoint_url(None, "eu-west-1"), "https://ec2.eu-west-1.amazonaws.com/");
        assert_eq!(endpoint_url(None, "cn-north-1"), "https://ec2.cn-north-1.amazonaws.com.cn/");
    }

    #[test]
    fn the_secret_goes_to_curl_on_stdin_quoted() {
        let credentials = Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "a/b+c\"d".into(),
            session_token: None,
            ca_bundle: None,
        };
        assert_eq!(credentials.curl_config(), "user = \"AKID:a/b+c\\\"d\"\n");
        let with_token = Credentials { session_token: Some("tok".into()), ..credentials };
        assert!(with_token.curl_config().ends_with("header = \"x-amz-security-token: tok\"\n"));
        let with_bundle = Credentials { ca_bundle: Some("/etc/corp-ca.pem".into()), ..with_token };
        assert!(with_bundle.curl_config().ends_with("cacert = \"/etc/corp-ca.pem\"\n"));
    }

    #[test]
    fn fips_dual_stack_own_certificates_or_configured_endpoints_leave_the_call_to_the_cli() {
        let none = |_: &str| None;
        assert_eq!(setting_only_the_cli_follows(none, None), None);
        let config = "[default]\nregion = us-east-1\noutput = json\n[profile ci]\ncli_pager =\n";
        assert_eq!(setting_only_the_cli_follows(none, Some(config)), None);
        let fips = |name: &str| (name == "AWS_USE_FIPS_ENDPOINT").then(|| "true".to_string());
        assert_eq!(setting_only_the_cli_follows(fips, None).as_deref(), Some("AWS_USE_FIPS_ENDPOINT"));
        let off = |name: &str| (name == "AWS_USE_FIPS_ENDPOINT").then(|| "False".to_string());
        assert_eq!(setting_only_the_cli_follows(off, None), None);
        let dual = |name: &str| (name == "AWS_USE_DUALSTACK_ENDPOINT").then(|| "true".to_string());
        assert_eq!(setting_only_the_cli_follows(dual, None).as_deref(), Some("AWS_USE_DUALSTACK_ENDPOINT"));
        let bundle = |name: &str| (name == "AWS_CA_BUNDLE").then(|| "/etc/corp-ca.pem".to_string());
        assert_eq!(setting_only_the_cli_follows(bundle, None), None, "curl is given the same bundle");
        let configured = "[profile ci]\n  ca_bundle = /etc/corp-ca.pem\n";
        assert_eq!(
            setting_only_the_cli_follows(none, Some(configured)).as_deref(),
            Some("ca_bundle in the aws config file")
        );
    }
}
