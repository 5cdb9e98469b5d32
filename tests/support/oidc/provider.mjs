// The OpenID provider the OIDC sign-in tests run against: panva's oidc-provider, configured for
// the authorization code flow with PKCE (S256, required), refresh tokens, dynamic client
// registration (each test registers its own client with its exact redirect URIs), RP-initiated
// and back-channel logout, and the development login form (any login, any password).
//
// Environment: OIDC_PORT (required), OIDC_JWKS_FILE (the signing keys, private JWKs, so tests
// can also forge tokens with the provider's own key), OIDC_ACCESS_TOKEN_TTL (seconds).
// A login name is the account: `alice@acme.example` has that email (verified); a name starting
// with `unverified` has email_verified false; a name without `@` gets `@example.org`.
import { readFileSync } from 'node:fs';

import Provider from 'oidc-provider';

const port = Number(process.env.OIDC_PORT);
if (!port) {
  throw new Error('OIDC_PORT is required');
}
const issuer = `http://127.0.0.1:${port}`;
const jwks = JSON.parse(readFileSync(process.env.OIDC_JWKS_FILE, 'utf8'));
const accessTtl = Number(process.env.OIDC_ACCESS_TOKEN_TTL || 3600);

function claimsOf(id) {
  const email = id.includes('@') ? id : `${id}@example.org`;
  return {
    sub: id,
    email,
    email_verified: !id.startsWith('unverified'),
    name: id.split('@')[0],
    groups: ['staff', 'idp-users'],
  };
}

const configuration = {
  jwks,
  clients: [],
  cookies: { keys: ['warden-test-provider-cookie-key'] },
  features: {
    devInteractions: { enabled: true },
    registration: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    backchannelLogout: { enabled: true },
    revocation: { enabled: true },
    userinfo: { enabled: true },
  },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
  // Scope claims go into the ID token too (Warden reads them there).
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  ttl: {
    AccessToken: accessTtl,
    AuthorizationCode: 60,
    IdToken: 3600,
    RefreshToken: 86400,
    Interaction: 600,
    Session: 86400,
    Grant: 86400,
  },
  // The provider's outgoing requests (back-channel logout) refuse special-use addresses; in the
  // tests Warden listens on 127.0.0.1, so this test provider drops that guard (only here).
  fetch: (url, options) => {
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  async findAccount(ctx, id) {
    return { accountId: id, async claims() { return claimsOf(id); } };
  },
  // No consent screen: every client of this test provider is first party.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) {
      const found = await ctx.oidc.provider.Grant.find(grantId);
      if (found) return found;
    }
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid email profile groups offline_access');
    await grant.save();
    return grant;
  },
};

const provider = new Provider(issuer, configuration);
provider.on('backchannel.error', (ctx, error, client) => {
  console.error(`backchannel logout to ${client.clientId} failed: ${error.message}`);
});
provider.on('backchannel.success', (ctx, client) => {
  console.log(`backchannel logout to ${client.clientId} sent`);
});
provider.on('server_error', (ctx, error) => {
  console.error(`server error: ${error.stack}`);
});
const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`READY ${issuer}`);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
