//! EC2's Query API on the wire: the form parameters of a call and the XML of its answer.
//!
//! These structs are EC2's shapes, named as EC2 names them, and nothing else in the adapter
//! sees them: [`super::api`] turns them into the adapter's own types. Only the fields dibs
//! reads are declared; the rest of each answer is skipped. Lists are `<set><item>..</item>`.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The API version every call names (EC2's current and only Query API version).
pub const API_VERSION: &str = "2016-11-15";

/// The form parameters of one call, in the order they were added.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.0.push((key.into(), value.into()));
        self
    }

    /// `Key.1=a&Key.2=b`: how the Query API spells a list.
    pub fn list<S: AsRef<str>>(&mut self, key: &str, values: &[S]) -> &mut Self {
        for (index, value) in values.iter().enumerate() {
            self.set(format!("{key}.{}", index + 1), value.as_ref());
        }
        self
    }

    /// Appends the `Filter.N.Name` and `Filter.N.Value.M` of one filter.
    pub fn filter<S: AsRef<str>>(&mut self, name: &str, values: &[S]) -> &mut Self {
        let index =
            1 + self.0.iter().filter(|(key, _)| key.starts_with("Filter.") && key.ends_with(".Name")).count();
        self.set(format!("Filter.{index}.Name"), name);
        self.list(&format!("Filter.{index}.Value"), values)
    }

    /// The `application/x-www-form-urlencoded` body of a call to `action`.
    pub fn body(&self, action: &str) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        form.append_pair("Action", action).append_pair("Version", API_VERSION);
        for (key, value) in &self.0 {
            form.append_pair(key, value);
        }
        form.finish()
    }
}

/// `<set><item>..</item>..</set>`; an absent or empty set is empty.
#[derive(Debug, Deserialize)]
pub struct Items<T> {
    #[serde(rename = "item", default = "Vec::new")]
    pub item: Vec<T>,
}

impl<T> Default for Items<T> {
    fn default() -> Self {
        Self { item: Vec::new() }
    }
}

/// A page of a described list and the token of the next page (moto writes an empty
/// `<nextToken/>` on the last page, EC2 omits it).
pub trait Page {
    type Item;
    fn into_parts(self) -> (Vec<Self::Item>, Option<String>);
}

fn next(token: Option<String>) -> Option<String> {
    token.filter(|token| !token.trim().is_empty())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeInstanceTypesResponse {
    #[serde(default)]
    pub instance_type_set: Items<InstanceTypeInfo>,
    pub next_token: Option<String>,
}

impl Page for DescribeInstanceTypesResponse {
    type Item = InstanceTypeInfo;
    fn into_parts(self) -> (Vec<InstanceTypeInfo>, Option<String>) {
        (self.instance_type_set.item, next(self.next_token))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceTypeInfo {
    pub instance_type: String,
    pub gpu_info: Option<GpuInfo>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuInfo {
    #[serde(default)]
    pub gpus: Items<GpuDeviceInfo>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuDeviceInfo {
    pub name: String,
    pub manufacturer: Option<String>,
    pub count: u32,
    pub memory_info: Option<GpuMemoryInfo>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GpuMemoryInfo {
    #[serde(rename = "sizeInMiB")]
    pub size_in_mib: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeInstanceTypeOfferingsResponse {
    #[serde(default)]
    pub instance_type_offering_set: Items<InstanceTypeOffering>,
    pub next_token: Option<String>,
}

impl Page for DescribeInstanceTypeOfferingsResponse {
    type Item = InstanceTypeOffering;
    fn into_parts(self) -> (Vec<InstanceTypeOffering>, Option<String>) {
        (self.instance_type_offering_set.item, next(self.next_token))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceTypeOffering {
    pub instance_type: String,
    pub location: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeAvailabilityZonesResponse {
    #[serde(default)]
    pub availability_zone_info: Items<AvailabilityZone>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AvailabilityZone {
    pub zone_name: String,
    pub zone_state: Option<String>,
    pub zone_type: Option<String>,
}

/// `RunInstances` answers one reservation.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunInstancesResponse {
    #[serde(default)]
    pub instances_set: Items<InstanceInfo>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DescribeInstancesResponse {
    #[serde(default)]
    pub reservation_set: Items<ReservationInfo>,
    pub next_token: Option<String>,
}

impl Page for DescribeInstancesResponse {
    type Item = InstanceInfo;
    fn into_parts(self) -> (Vec<InstanceInfo>, Option<String>) {
        let instances = self.reservation_set.item.into_iter().flat_map(|r| r.instances_set.item).collect();
        (instances, next(self.next_token))
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReservationInfo {
    #[serde(default)]
    pub instances_set: Items<InstanceInfo>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceInfo {
    pub instance_id: String,
    pub instance_type: String,
    pub instance_state: InstanceStateInfo,
    pub placement: Option<PlacementInfo>,
    pub state_reason: Option<StateReasonInfo>,
    /// `spot` for a spot instance; absent for on-demand.
    pub instance_lifecycle: Option<String>,
    #[serde(default)]
    pub tag_set: Items<TagInfo>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStateInfo {
    pub name: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlacementInfo {
    pub availability_zone: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StateReasonInfo {
    pub code: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TagInfo {
    pub key: String,
    #[serde(default)]
    pub value: String,
}

impl InstanceInfo {
    pub fn tags(&self) -> BTreeMap<String, String> {
        self.tag_set.item.iter().map(|tag| (tag.key.clone(), tag.value.clone())).collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TerminateInstancesResponse {
    #[serde(default)]
    pub instances_set: Items<InstanceStateChange>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStateChange {
    pub instance_id: String,
    pub current_state: InstanceStateInfo,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_filters_are_spelled_as_the_query_api_spells_them() {
        let mut params = Params::new();
        params.list("InstanceType", &["p5.48xlarge", "p4d.24xlarge"]);
        params.filter("tag:dibs:allocation", &["7"]).filter("instance-state-name", &["pending", "running"]);
        assert_eq!(
            params.body("DescribeInstances"),
            "Action=DescribeInstances&Version=2016-11-15&InstanceType.1=p5.48xlarge&\
             InstanceType.2=p4d.24xlarge&Filter.1.Name=tag%3Adibs%3Aallocation&Filter.1.Value.1=7&\
             Filter.2.Name=instance-state-name&Filter.2.Value.1=pending&Filter.2.Value.2=running"
        );
    }
}
