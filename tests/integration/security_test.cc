// Transport security of a real in-process server with certificates made at test time: TLS
// answers TLS clients that trust its CA and no one else; mutual TLS also refuses clients without
// a certificate of the configured CA; bad files stop the server at start, naming the flag. The
// C++ client library's TLS and bearer-token options are used end to end, with every Step output
// checked against the float64 reference.

#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <random>
#include <string>

#include "flashkv/client/client.h"
#include "flashkv/server/server.h"
#include "testing/certificates.h"
#include "testing/conversation.h"
#include "testing/test_server.h"

namespace flashkv::testing {
namespace {

namespace v1 = flashkv::v1;

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<TestCertificates> certs = MakeTestCertificates();
    ASSERT_TRUE(certs.ok()) << certs.status();
    certs_ = new TestCertificates(*std::move(certs));
  }
  static void TearDownTestSuite() {
    delete certs_;  // and the directory
    certs_ = nullptr;
  }

  static server::ServerConfig TlsConfig(bool mutual) {
    server::ServerConfig config = SmallModelConfig();
    config.security.plaintext = false;
    config.security.tls_cert_file = certs_->server_cert;
    config.security.tls_key_file = certs_->server_key;
    if (mutual) config.security.tls_client_ca_file = certs_->ca;
    return config;
  }

  void Start(const server::ServerConfig& config) {
    absl::StatusOr<std::unique_ptr<server::Server>> server = server::Server::Create(config);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = *std::move(server);
  }

  // A client of the running server. `tls`: trust the test CA; `cert`/`key`: present them.
  std::unique_ptr<Client> NewClient(bool tls, const std::string& cert = "",
                                    const std::string& key = "", const std::string& token = "") {
    ClientConfig config;
    config.channel.target = "localhost:" + std::to_string(server_->port());
    config.channel.tls.enabled = tls;
    config.channel.tls.root_certs_file = certs_->ca;
    config.channel.tls.client_cert_file = cert;
    config.channel.tls.client_key_file = key;
    config.channel.dedicated_connection = true;
    config.bearer_token = token;
    config.default_timeout = absl::Seconds(10);
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(config);
    EXPECT_TRUE(client.ok()) << client.status();
    return client.ok() ? *std::move(client) : nullptr;
  }

  static TestCertificates* certs_;
  std::unique_ptr<server::Server> server_;
};

TestCertificates* SecurityTest::certs_ = nullptr;

TEST_F(SecurityTest, TlsAnswersTlsClientsThatTrustItsCa) {
  Start(TlsConfig(/*mutual=*/false));
  absl::StatusOr<v1::CacheInfo> info = NewClient(/*tls=*/true)->GetCacheInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->num_layers(), 3u);

  // Plaintext against TLS: the handshake never completes.
  absl::StatusOr<v1::CacheInfo> plain = NewClient(/*tls=*/false)->GetCacheInfo();
  EXPECT_EQ(plain.status().code(), absl::StatusCode::kUnavailable) << plain.status();

  // A client trusting another CA does not accept the server's certificate.
  ClientConfig stranger;
  stranger.channel.target = "localhost:" + std::to_string(server_->port());
  stranger.channel.tls.enabled = true;
  stranger.channel.tls.root_certs_file = certs_->dir + "/other-ca.pem";
  stranger.channel.dedicated_connection = true;
  stranger.default_timeout = absl::Seconds(10);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Create(stranger);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->GetCacheInfo().status().code(), absl::StatusCode::kUnavailable);
}

TEST_F(SecurityTest, MutualTlsRefusesClientsWithoutACertificateOfItsCa) {
  Start(TlsConfig(/*mutual=*/true));
  absl::StatusOr<v1::CacheInfo> info =
      NewClient(true, certs_->client_cert, certs_->client_key)->GetCacheInfo();
  ASSERT_TRUE(info.ok()) << info.status();

  absl::StatusOr<v1::CacheInfo> anonymous = NewClient(true)->GetCacheInfo();
  EXPECT_EQ(anonymous.status().code(), absl::StatusCode::kUnavailable) << anonymous.status();
  absl::StatusOr<v1::CacheInfo> stranger =
      NewClient(true, certs_->stranger_cert, certs_->stranger_key)->GetCacheInfo();
  EXPECT_EQ(stranger.status().code(), absl::StatusCode::kUnavailable) << stranger.status();
}

TEST_F(SecurityTest, BadCertificateFilesStopTheServerNamingTheFlag) {
  const struct {
    std::function<void(server::ServerConfig&)> mutate;
    const char* message;
  } cases[] = {
      {[](server::ServerConfig& c) { c.security.tls_cert_file = "/nonexistent/cert.pem"; },
       "--tls-cert: cannot read '/nonexistent/cert.pem'"},
      {[](server::ServerConfig& c) { c.security.tls_key_file = certs_->client_key; },
       "--tls-key: '"},
      {[](server::ServerConfig& c) { c.security.tls_cert_file = certs_->server_key; },
       "holds no PEM certificate"},
      {[](server::ServerConfig& c) { c.security.tls_key_file = certs_->server_cert; },
       "holds no unencrypted PEM private key"},
      {[](server::ServerConfig& c) { c.security.tls_client_ca_file = certs_->server_key; },
       "--tls-client-ca: '"},
  };
  for (const auto& c : cases) {
    server::ServerConfig config = TlsConfig(/*mutual=*/false);
    c.mutate(config);
    absl::StatusOr<std::unique_ptr<server::Server>> server = server::Server::Create(config);
    ASSERT_FALSE(server.ok()) << c.message;
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(server.status().message().find(c.message), std::string::npos) << server.status();
  }
}

// The client library's TLS, client certificate and bearer token together, as a model runner
// would use them: a prefill and decodes, every output equal to the reference.
TEST_F(SecurityTest, ClientLibraryStepsOverMutualTlsWithABearerToken) {
  const std::string tokens = certs_->dir + "/tokens.txt";
  const std::string token = "runner-token-0123456789abcdef";
  std::ofstream(tokens) << token << " runners\n";
  server::ServerConfig config = TlsConfig(/*mutual=*/true);
  config.security.tokens_file = tokens;
  Start(config);
  std::unique_ptr<Client> client = NewClient(true, certs_->client_cert, certs_->client_key, token);
  ASSERT_TRUE(client->CreateSequence("s").ok());
  ReferenceCache reference(config.model);
  std::mt19937_64 rng(5);
  for (int n : {7, 1, 1}) {
    for (int layer = 0; layer < config.model.num_layers; ++layer) {
      const v1::StepEntry entry = reference.MakeEntry("s", n, rng);
      absl::StatusOr<v1::StepResponse> response = client->Step(MakeStep(layer, {entry}));
      ASSERT_TRUE(response.ok()) << response.status();
      EXPECT_EQ(reference.Apply(layer, entry, response->out(0)), "");
    }
  }
  // The same channel without the token is refused.
  std::unique_ptr<Client> anonymous = NewClient(true, certs_->client_cert, certs_->client_key);
  EXPECT_EQ(anonymous->CreateSequence("t").status().code(), absl::StatusCode::kUnauthenticated);
}

}  // namespace
}  // namespace flashkv::testing
