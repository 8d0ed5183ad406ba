//! The two things LocalStack's CloudFormation does not do as AWS does, done around it:
//!
//! - A template body sent inline may be 51,200 bytes at most, in AWS and in LocalStack. `sam deploy
//!   --resolve-s3` uploads the template to S3 for that reason, and so does [`stage_template`], to the
//!   emulator's S3.
//! - A `AWS::CloudWatch::Dashboard` is recorded by LocalStack's CloudFormation without being created (its
//!   CloudWatch has dashboards, its CloudFormation does not create them). [`put_dashboards`] creates each one
//!   through the CloudWatch API, with the body CloudFormation would have substituted.
//!
//! Both speak plain HTTP to the emulator, which takes unsigned requests: only for LocalStack, never for AWS.

use anyhow::{anyhow, bail, Context as _, Result};
use serde_norway::Value;

use crate::cfn::tagged;

/// The emulator's bucket for staged templates.
const TEMPLATE_BUCKET: &str = "dualcaster-templates";

/// Form-encoded requests to LocalStack's query APIs are routed by the service in this header.
const CLOUDWATCH_AUTHORIZATION: &str =
    "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/monitoring/aws4_request, SignedHeaders=host, Signature=0";

/// Puts `body` in the emulator's S3 and returns its URL, for `CreateStack`/`UpdateStack`'s `TemplateURL`.
pub async fn stage_template(endpoint: &str, stack: &str, body: &str) -> Result<String> {
    let http = reqwest::Client::new();
    let bucket = format!("{}/{TEMPLATE_BUCKET}", endpoint.trim_end_matches('/'));
    // Creating a bucket that exists (and is ours) succeeds in the emulator.
    check(
        http.put(&bucket).send().await,
        "creating the template bucket",
    )
    .await?;
    let url = format!("{bucket}/{stack}.yaml");
    check(
        http.put(&url).body(body.to_owned()).send().await,
        "uploading the template",
    )
    .await?;
    Ok(url)
}

/// Every dashboard of `template` (plain CloudFormation YAML), created through the emulator's CloudWatch with
/// `${AWS::StackName}` and `${AWS::Region}` substituted as CloudFormation would. Returns their names.
pub async fn put_dashboards(
    endpoint: &str,
    template: &str,
    stack: &str,
    region: &str,
) -> Result<Vec<String>> {
    let http = reqwest::Client::new();
    let mut names = Vec::new();
    for (name, body) in dashboards(template, stack, region)? {
        let response = http
            .post(endpoint)
            .header("Authorization", CLOUDWATCH_AUTHORIZATION)
            .form(&[
                ("Action", "PutDashboard"),
                ("Version", "2010-08-01"),
                ("DashboardName", name.as_str()),
                ("DashboardBody", body.as_str()),
            ])
            .send()
            .await;
        check(response, &format!("PutDashboard {name}")).await?;
        names.push(name);
    }
    Ok(names)
}

/// The body of dashboard `name` as the emulator's CloudWatch holds it.
pub async fn get_dashboard(endpoint: &str, name: &str) -> Result<String> {
    let response = reqwest::Client::new()
        .post(endpoint)
        .header("Authorization", CLOUDWATCH_AUTHORIZATION)
        .form(&[
            ("Action", "GetDashboard"),
            ("Version", "2010-08-01"),
            ("DashboardName", name),
        ])
        .send()
        .await;
    let xml = check(response, &format!("GetDashboard {name}")).await?;
    let body = xml
        .split_once("<DashboardBody>")
        .and_then(|(_, rest)| rest.split_once("</DashboardBody>"))
        .map(|(body, _)| body)
        .ok_or_else(|| anyhow!("GetDashboard {name}: no DashboardBody in {xml}"))?;
    Ok(unescape_xml(body))
}

/// Each dashboard's name and body, substituted.
pub fn dashboards(template: &str, stack: &str, region: &str) -> Result<Vec<(String, String)>> {
    let doc: Value = serde_norway::from_str(template)?;
    let substitute = |value: &Value| -> Option<String> {
        let text = tagged(value, "Sub")
            .and_then(Value::as_str)
            .or_else(|| value.as_str())?;
        Some(
            text.replace("${AWS::StackName}", stack)
                .replace("${AWS::Region}", region),
        )
    };
    let mut out = Vec::new();
    for (id, resource) in doc
        .get("Resources")
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
    {
        if resource.get("Type").and_then(Value::as_str) != Some("AWS::CloudWatch::Dashboard") {
            continue;
        }
        let id = id.as_str().unwrap_or("(dashboard)");
        let props = resource
            .get("Properties")
            .ok_or_else(|| anyhow!("{id}: no Properties"))?;
        let name = props
            .get("DashboardName")
            .and_then(substitute)
            .ok_or_else(|| anyhow!("{id}: DashboardName must be a string or !Sub string"))?;
        let body = props
            .get("DashboardBody")
            .and_then(substitute)
            .ok_or_else(|| anyhow!("{id}: DashboardBody must be a string or !Sub string"))?;
        if body.contains("${") {
            bail!("{id}: DashboardBody refers to something other than the stack name and region");
        }
        out.push((name, body));
    }
    Ok(out)
}

async fn check(response: reqwest::Result<reqwest::Response>, what: &str) -> Result<String> {
    let response =
        response.with_context(|| format!("{what}: is LocalStack up? (`make stack-up`)"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{what}: HTTP {status}: {text}");
    }
    Ok(text)
}

fn unescape_xml(text: &str) -> String {
    text.replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The names of the emulator's CloudWatch alarms that start with `prefix` (a stack's: `<stack>-`).
pub async fn alarm_names(endpoint: &str, prefix: &str) -> Result<Vec<String>> {
    let response = reqwest::Client::new()
        .post(endpoint)
        .header("Authorization", CLOUDWATCH_AUTHORIZATION)
        .form(&[
            ("Action", "DescribeAlarms"),
            ("Version", "2010-08-01"),
            ("AlarmNamePrefix", prefix),
            ("MaxRecords", "100"),
        ])
        .send()
        .await;
    let xml = check(response, "DescribeAlarms").await?;
    Ok(xml
        .split("<AlarmName>")
        .skip(1)
        .filter_map(|rest| rest.split_once("</AlarmName>"))
        .map(|(name, _)| unescape_xml(name))
        .collect())
}
