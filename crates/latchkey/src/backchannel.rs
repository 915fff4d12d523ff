//! Delivery of OIDC back-channel logout tokens over HTTP (the core decides what to send).

use anyhow::anyhow;

pub struct HttpLogoutDelivery {
    client: reqwest::Client,
}

impl HttpLogoutDelivery {
    pub fn new() -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("latchkey")
            .build()
            .map_err(|e| anyhow!("cannot build the HTTP client for back-channel logout: {e}"))?;
        Ok(HttpLogoutDelivery { client })
    }
}

#[async_trait::async_trait]
impl latchkey_core::oauth::backchannel::LogoutDelivery for HttpLogoutDelivery {
    async fn deliver(&self, uri: &str, logout_token: &str) -> Result<u16, String> {
        let response =
            self.client.post(uri).form(&[("logout_token", logout_token)]).send().await.map_err(|e| e.to_string())?;
        Ok(response.status().as_u16())
    }
}
